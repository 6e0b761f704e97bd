"""The ``xkmcast`` command line: each command is a few lines over the library."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Kilometre-scale generative weather models for xarray.")
catalog_app = typer.Typer(no_args_is_help=True, help="List and download the datasets of the xkmcast catalog.")
app.add_typer(catalog_app, name="catalog")


@app.command()
def version() -> None:
    """Print the xkmcast version."""
    import xkmcast

    typer.echo(xkmcast.__version__)


@catalog_app.command("list")
def catalog_list() -> None:
    """List the catalog entries with their descriptions."""
    from rich.console import Console
    from rich.table import Table

    from .data.catalog import catalog_list as entries

    table = Table("name", "description")
    for name, description in entries():
        table.add_row(name, description)
    Console().print(table)


@catalog_app.command("fetch")
def catalog_fetch(name: str) -> None:
    """Download the files of catalog entry NAME (hash-checked, cached); print the local path."""
    from .data.catalog import catalog_fetch as fetch

    typer.echo(str(fetch(name)))


def main() -> None:  # pragma: no cover
    app()
