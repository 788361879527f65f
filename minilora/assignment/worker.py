"""The grading child: runs one exercise's cases on a submission, in a process of its own.

``grade.py`` starts it as ``python -I -S -B -c <this file's text> <config json>``
with the hybrid package (the student's code for this exercise, the instructor's
for every other) first on ``sys.path``, and sends the cases, pickled, on stdin.
It answers on a pipe of its own (``result_fd``), never on stdout, which the
student's code may print to. Each answer is one frame, an 8-byte length and an
.npz of plain arrays that the grader reads with ``allow_pickle=False``:

    kind "case"   index, keys, v0, v1, ...        run_case's result for case ``index``
    kind "error"  index, type, message, where     the student's code raised on case ``index``
    kind "fatal"  type, message, where            the package did not import: no case ran
    kind "end"    token, count                    sent once, after every case

A child that exits early (``os._exit``), is killed on time-out, or sends less
than a frame per case and the end frame earns nothing. It never judges: the
instructor's values exist only in the grader's process.

Before any of the student's code is imported, ``_install_guard`` adds an audit
hook (PEP 578), which cannot be removed, that refuses: reading, listing or
importing anything but the child's own folder and the Python installation (the
instructor's package refused even there); writing, renaming or deleting outside the
child's own work folder; links; starting processes, signalling other processes,
sockets; ctypes (so memory cannot be patched); and walking the garbage
collector's objects (so the hook's own state cannot be found and changed).
"""
import builtins
import contextlib
import io
import json
import os
import resource
import sys

_BLOCKED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
                   "os.startfile", "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink", "os.link",
                   "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames", "pty.spawn")
_BLOCKED_PREFIXES = ("ctypes.", "socket.", "_posixsubprocess.")
# C modules that reach files, processes or memory without an audit event of their own (readline reads any file
# into its history, _posixsubprocess forks, a subinterpreter has no audit hook): none of them is needed.
_BLOCKED_IMPORTS = frozenset((
    "ctypes", "_ctypes", "_ctypes_test", "cffi", "_cffi_backend", "readline", "_sqlite3", "_dbm", "_gdbm", "_tkinter",
    "_curses", "_curses_panel", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels", "_interpreters",
    "_interpchannels", "_interpqueues", "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic",
    "_testmultiphase", "_testsinglephase", "_testimportmultiple", "_xxtestfuzz"))
_WRITE_EVENTS = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                 "shutil.rmtree", "shutil.move", "os.chflags", "os.setxattr",
                 "os.removexattr", "sqlite3.connect")  # sqlite opens (and may create) its file in C
_COPY_EVENTS = ("shutil.copyfile", "shutil.copytree")  # (source: read, destination: written)
_DEVICES = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero")  # readable too
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
MESSAGE_CHARS = 300  # an exception's message is cut to this many characters


def _install_guard(own_root, python_paths, packages, writable):
    """Add the audit hook. The child may read only ``own_root`` (the hybrid and its work folder) and
    ``python_paths`` (the Python installation), never ``packages`` (the instructor's minilora folders) even
    there; it may load C extensions only from ``python_paths``, and write only in ``writable``."""
    python_paths, packages = tuple(python_paths), tuple(packages)
    roots = (own_root,) + python_paths + _DEVICES + (f"/proc/{os.getpid()}",)
    realpath, sep = os.path.realpath, os.sep

    def under(path, folder):
        return path == folder or path.startswith(folder + sep)

    def resolve(path):
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return realpath(path) if isinstance(path, str) else None

    def readable(path):
        return path is None or (any(under(path, r) for r in roots) and not any(under(path, p) for p in packages))

    def hook(event, args):
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            raise PermissionError(f"the grader does not allow {event}")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            path = resolve(path)
            if not readable(path):
                raise PermissionError(f"the grader does not allow reading {path}")
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if writing and not under(path, writable) and path != os.devnull:
                raise PermissionError(f"the grader does not allow writing {path}: write only in the current folder")
        elif event in ("os.listdir", "os.scandir"):
            if not readable(resolve(args[0] if args and args[0] is not None else ".")):
                raise PermissionError(f"the grader does not allow listing {args[0]}")
        elif event in _COPY_EVENTS:
            hook("open", (args[0], "r", 0))
            hook("open", (args[1], "w", 0))
        elif event in _WRITE_EVENTS:
            for path in args:
                if path in (":memory:", "", b":memory:", b""):
                    continue
                if isinstance(path, (str, bytes, os.PathLike)) and not under(resolve(path), writable):
                    raise PermissionError(f"the grader does not allow {event} on {path}: write only in the current folder")
        elif event == "import":
            name, filename, path, meta_path = args[:4]
            if name in _BLOCKED_IMPORTS or name.split(".")[0] in _BLOCKED_IMPORTS:
                raise ImportError(f"the grader does not allow importing {name}")
            if filename is not None and not any(under(resolve(filename), p) for p in python_paths):
                raise PermissionError(f"the grader does not allow loading the C extension {filename}")
            if any(type(finder).__module__.startswith("__editable__") for finder in meta_path or ()):
                raise PermissionError("the grader does not allow the editable install's finder")
            for entry in path or ():
                if isinstance(entry, (str, bytes)) and not readable(resolve(entry or ".")):
                    raise PermissionError(f"the grader does not allow importing from {entry}")

    sys.addaudithook(hook)


def _limit(memory_bytes, cpu_seconds, file_bytes):
    """Hard limits (the child cannot raise them again): memory, CPU time, the size of a file it writes."""
    for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_CORE, 0)):
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # a limit can only go down
        with contextlib.suppress(ValueError, OSError):  # macOS refuses some (RLIMIT_AS): the time limit still holds
            resource.setrlimit(limit, (value, value))


def _send(fd, **arrays):
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
    data = buffer.getvalue()
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def _describe(error, root):
    """(type name, message, where) of an exception raised by the student's code, each short.

    Everything here reaches the student, and the hybrid holds the instructor's code of the other exercises:
    so only a built-in exception's name (a class of the student's own is named by its built-in base), the
    message's first line, cut short, and a place that is a real file of the package with a plain name.
    """
    kind = next(c.__name__ for c in type(error).__mro__ if getattr(builtins, c.__name__, None) is c)
    kind = kind if type(error).__name__ == kind and getattr(builtins, kind) is type(error) else f"{kind} (a subclass)"
    try:
        message = str(error).split("\n")[0][:MESSAGE_CHARS]
    except BaseException:  # noqa: BLE001  a __str__ the student wrote may raise anything
        message = "<the exception's message could not be printed>"
    where, tb = "", error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        path = os.path.realpath(code.co_filename)
        if path.startswith(root + os.sep) and os.path.isfile(path) and code.co_name.isidentifier():
            where = f"{path[len(root):].lstrip(os.sep)}:{tb.tb_lineno} in {code.co_name[:60]}"
        tb = tb.tb_next
    return kind, message, where


def _numeric(result):
    """run_case's result as {key: numeric array}; a TypeError naming what is not."""
    import numpy as np

    if not isinstance(result, dict):
        raise TypeError(f"the check produced {type(result).__name__}, not a dict of arrays")
    arrays = {}
    for key, value in result.items():
        value = np.asarray(value)
        if not isinstance(key, str) or value.dtype.kind not in "biuf":
            raise TypeError(f"the result {key!r} holds {value.dtype} values, not numbers")
        arrays[key] = value
    return arrays


def main():
    config = json.loads(sys.argv[1])
    sys.path[:] = config["sys_path"]
    sys.dont_write_bytecode = True
    fd, root = config["result_fd"], config["package_root"]
    payload = sys.stdin.buffer.read()
    sys.stdin.close()
    _limit(config["memory_bytes"], config["cpu_seconds"], config["file_bytes"])
    _install_guard(config["package_root"], config["python_paths"], config["packages"], config["work"])
    import pickle
    __import__("zipfile")  # np.savez imports it: now, before the student's code can break imports

    import numpy as np

    job = pickle.loads(payload)  # from the grader, read before any of the student's code runs
    number, token = job["number"], job["token"]
    try:
        import minilora
        from minilora.assignment import checks
        from minilora.assignment.judging import Case

        minilora.set_backend("numpy")
    except BaseException as error:  # noqa: BLE001  the student's package may fail to import in any way
        sys.path[:] = config["sys_path"]
        kind, message, where = _describe(error, root)
        _send(fd, kind="fatal", type=kind, message=message, where=where)
        _send(fd, kind="end", token=token, count=0)
        return
    for index, (name, inputs, smooth) in enumerate(job["cases"]):
        try:
            arrays = _numeric(checks.run_case(minilora, number, Case(name, inputs, smooth)))
        except BaseException as error:  # noqa: BLE001  sys.exit() and KeyboardInterrupt fail the case too
            sys.path[:] = config["sys_path"]  # as it was, whatever the student's code did to it
            kind, message, where = _describe(error, root)
            _send(fd, kind="error", index=index, type=kind, message=message, where=where)
            continue
        sys.path[:] = config["sys_path"]
        keys = list(arrays)
        _send(fd, kind="case", index=index, keys=np.array(keys, dtype=str),
              **{f"v{i}": arrays[key] for i, key in enumerate(keys)})
    _send(fd, kind="end", token=token, count=len(job["cases"]))


if __name__ == "__main__":
    main()
    with contextlib.suppress(Exception):  # the student's code may have closed stdout
        sys.stdout.flush()
    os._exit(0)  # now: no thread or exit handler of the student's may run on, or change the exit status
