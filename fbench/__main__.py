"""`python -m fbench ...` (e.g. under torchrun) is the `fbench` command."""

from fbench.cli import main

if __name__ == "__main__":
    main()
