"""The Great Expectations side of validation, kept in one module because importing GX takes
seconds: only `cme validate` and the retrain pay for it.

A fresh ephemeral context per run (in-memory stores, no analytics, no progress bars) holds
the two suites, one validation definition each over the same in-memory DataFrame, and a
checkpoint whose action writes the Data Docs HTML site.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from pipelines.validation.suites import Expectation

DOCS_SITE = "cme"


def validate(
    frame: pd.DataFrame, rules: Sequence[Expectation], docs_dir: Path | None, example_rows: int
) -> list[dict[str, Any]]:
    """Each rule's outcome as {success, result, exception}, in the order of `rules`."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral", project_config=_project_config(docs_dir))
    batch = (
        context.data_sources.add_pandas("cme")
        .add_dataframe_asset("snapshot_manifest")
        .add_batch_definition_whole_dataframe("whole manifest")
    )
    definitions = []
    for suite_name in dict.fromkeys(rule.suite for rule in rules):
        members = [_expectation(rule) for rule in rules if rule.suite == suite_name]
        suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=members))
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
            )
        )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="snapshot",
            validation_definitions=definitions,
            result_format=_result_format(frame, example_rows),
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    if docs_dir is not None:
        context.build_data_docs(site_names=[DOCS_SITE])  # once for both suites
    by_rule: dict[tuple[str, str], dict[str, Any]] = {}
    for suite_result in outcome.run_results.values():
        for result in suite_result.results:
            config = result.expectation_config
            meta = (config.meta if config is not None else None) or {}
            exception = (result.exception_info or {}).get("exception_message")
            by_rule[(meta["suite"], meta["rule"])] = {
                "success": result.success,
                "result": result.result,
                "exception": exception if not result.success else None,
            }
    return [by_rule[(rule.suite, rule.rule)] for rule in rules]


def _result_format(frame: pd.DataFrame, example_rows: int) -> dict[str, Any]:
    """Offending rows are named by image (lesion, split) when the manifest has those columns."""
    names = [column for column in ("image_id", "lesion_id", "split") if column in frame.columns]
    result_format: dict[str, Any] = {
        "result_format": "COMPLETE",
        "partial_unexpected_count": example_rows,
    }
    if names:
        result_format["unexpected_index_column_names"] = names
    return result_format


def _expectation(rule: Expectation) -> Any:
    import great_expectations.expectations as gxe

    kind = getattr(gxe, rule.kind)
    return kind(**rule.kwargs, meta={"suite": rule.suite, "rule": rule.rule})


def _project_config(docs_dir: Path | None) -> Any:
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    return DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
