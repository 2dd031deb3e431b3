"""`python cli.py ...` from a checkout: the same command line as `acdc-lite ...` (it lives in acdc_lite/cli.py)."""

from acdc_lite.cli import app

if __name__ == "__main__":
    app(prog_name="acdc-lite")
