"""``python -m minilora.paper``: the same as ``minilora paper``."""
import argparse

from . import DESCRIPTION, add_paper_arguments, run_paper

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minilora.paper", description=DESCRIPTION)
    run_paper(add_paper_arguments(parser).parse_args())
