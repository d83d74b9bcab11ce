"""``python -m bundler``: the command line."""

from .cli import main

main()
