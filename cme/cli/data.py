"""`cme sample-data` and `cme params`."""

from __future__ import annotations

from pathlib import Path

import typer

from cme.cli.common import OVERRIDES, opened_app


def sample_data(
    folder: Path = typer.Argument(..., help="Where to write metadata.csv and images/."),
    n: int | None = typer.Option(None, "--n", help="Number of images (default params.yaml)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same images; ids carry the seed."),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Generate a dermoscopy-like labelled set in the HAM10000 layout (no download)."""
    from usecases.sample_data import SampleSpec, write_sample_data

    with opened_app() as cme:
        params = cme.params(overrides).sample_data
    spec = SampleSpec(
        n=n if n is not None else params.n,
        seed=seed,
        image_size=params.image_size,
        melanoma_fraction=params.melanoma_fraction,
        multi_image_lesion_fraction=params.multi_image_lesion_fraction,
    )
    metadata = write_sample_data(folder, spec)
    typer.echo(f"wrote {spec.n} images to {folder / 'images'} and {metadata}")
    typer.echo(f"next: cme labels import {metadata} --images {folder / 'images'}")


def show_params(overrides: list[str] = OVERRIDES) -> None:
    """Print the effective parameters (params.yaml with any -S overrides) as YAML."""
    import yaml

    with opened_app() as cme:
        params = cme.params(overrides)
    typer.echo(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False).rstrip())
