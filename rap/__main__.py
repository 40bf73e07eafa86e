"""``python -m rap`` (what ``torchrun ... -m rap train ...`` runs): the ``rap`` command line."""

from rap.cli import app

app(prog_name="rap")
