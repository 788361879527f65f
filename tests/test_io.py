"""minilora.io: bfloat16 and other dtypes are read, unreadable ones are named, saved files get the user's umask."""
import json
import os
import stat
import struct

import numpy as np
import pytest

from conftest import require_oracle
from minilora.io import load_safetensors, save_json, save_safetensors


def write_safetensors_by_hand(path, tensors):
    """tensors: name -> (safetensors dtype, shape, raw little-endian bytes); the format's spec, written out."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the spec pads the header with spaces to a multiple of 8 bytes
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_bfloat16_is_read_as_float32(tmp_path):
    # bfloat16 bit patterns and their values: 1.0, -2.5, +inf, the smallest subnormal 2**-133, 3.140625.
    bits = [0x3F80, -0x3FE0 & 0xFFFF, 0x7F80, 0x0001, 0x4049]
    expected = np.array([1.0, -2.5, np.inf, 2.0 ** -133, 3.140625], dtype=np.float32)
    write_safetensors_by_hand(tmp_path / "w.safetensors", {
        "bf16": ("BF16", (5,), struct.pack("<5H", *bits)),
        "f16": ("F16", (2,), np.array([0.5, -3.0], dtype="<f2").tobytes()),
        "i64": ("I64", (1, 2), np.array([[7, -8]], dtype="<i8").tobytes()),
    })
    arrays, _ = load_safetensors(tmp_path / "w.safetensors")
    assert list(arrays) == ["bf16", "f16", "i64"]
    assert arrays["bf16"].dtype == np.float32
    np.testing.assert_array_equal(arrays["bf16"], expected)
    assert arrays["f16"].dtype == np.float16 and arrays["f16"].tolist() == [0.5, -3.0]
    assert arrays["i64"].dtype == np.int64 and arrays["i64"].tolist() == [[7, -8]]


@pytest.mark.oracle
def test_bfloat16_written_by_torch_matches_torch(torch, tmp_path):
    safetensors_torch = require_oracle("safetensors.torch")
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": (torch.randn(3, 5, generator=generator) * 1e3).bfloat16(),
        "bf16_scalar": torch.tensor(-0.1).bfloat16(),
        "f16": torch.randn(4, generator=generator).half(),
        "f32": torch.randn(2, 3, generator=generator).float(),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
        "bool": torch.tensor([True, False]),
    }
    safetensors_torch.save_file(tensors, tmp_path / "w.safetensors", metadata={"format": "pt"})
    arrays, metadata = load_safetensors(tmp_path / "w.safetensors")
    assert metadata == {"format": "pt"}
    for name, tensor in tensors.items():
        expected = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        assert arrays[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(arrays[name], expected, err_msg=name)


def test_unreadable_dtype_names_the_tensor_its_dtype_and_the_fix(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors_by_hand(path, {
        "fine": ("F32", (1,), np.array([1.0], dtype="<f4").tobytes()),
        "h.0.weight": ("F8_E4M3", (2,), bytes([0x38, 0x40])),
    })
    with pytest.raises(ValueError) as info:
        load_safetensors(path)
    message = str(info.value)
    for part in (str(path), "'h.0.weight' (F8_E4M3)", "Fix: convert them to float32"):
        assert part in message
    assert "corrupt" not in message


# ---- permissions ------------------------------------------------------------------------------

@pytest.fixture
def umask():
    """Set the process umask for one test (a function of the new mask), and restore it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002], ids=lambda mask: f"umask={mask:03o}")
def test_new_files_get_the_umask_as_open_would(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w"):
        pass
    save_json(tmp_path / "a.json", {"x": 1})
    save_safetensors(tmp_path / "w.safetensors", {"x": np.zeros(2)})
    assert mode(tmp_path / "a.json") == mode(tmp_path / "w.safetensors") == mode(tmp_path / "plain.txt") == 0o666 & ~mask


def test_every_file_minilora_saves_gets_the_umask(tmp_path, umask):
    from minilora.models import GPT, GPTConfig
    from minilora.optim import AdamW
    from minilora.train import fit

    umask(0o027)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=20))
    model.save_pretrained(tmp_path / "gpt")
    batch = (np.zeros((1, 8), dtype=np.int64), np.zeros((1, 8), dtype=np.int64))
    fit(model, AdamW(model.parameters()), lambda rng: batch, 1, checkpoint_dir=tmp_path / "run", progress=False)
    saved = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
    assert len(saved) == 3
    assert {path: mode(path) for path in saved} == {path: 0o640 for path in saved}


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    """As open(path, "w") does: a file the user made private (or shared) stays so when it is saved again."""
    umask(0o022)
    for name, private in (("a.json", 0o600), ("b.json", 0o664)):
        (tmp_path / name).write_text("{}")
        os.chmod(tmp_path / name, private)
        save_json(tmp_path / name, {"x": 1})
        assert mode(tmp_path / name) == private
        assert json.loads((tmp_path / name).read_text()) == {"x": 1}
