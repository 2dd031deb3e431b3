"""`python -m acdc_lite ...`: the same command line as `acdc-lite ...`."""

from acdc_lite.cli import app

if __name__ == "__main__":
    app(prog_name="acdc-lite")
