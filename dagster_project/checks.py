"""Asset checks on the published snapshot (thin wrappers over `datasets_builder.quality`)."""

import dagster as dg

from dagster_project.assets import snapshot
from dagster_project.resources import DecontaminationResource, LakeResource, SourceResource, VlmResource, corpus_from
from datasets_builder import quality

# Hard contracts block; distribution checks warn (a small or young corpus is legitimately unbalanced).
_SEVERITY = {
    "schema_valid": dg.AssetCheckSeverity.ERROR,
    "no_duplicate_keys": dg.AssetCheckSeverity.ERROR,
    "counts_add_up": dg.AssetCheckSeverity.ERROR,
    "edit_type_balance": dg.AssetCheckSeverity.WARN,
    "validity_rate_in_band": dg.AssetCheckSeverity.WARN,
}


def _check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=snapshot, name=name, description=(quality.CHECKS.get(name) or quality.counts_add_up).__doc__)
    def _run(source: SourceResource, vlm: VlmResource, lake: LakeResource,
             decontamination: DecontaminationResource) -> dg.AssetCheckResult:
        corpus = corpus_from(source, vlm, lake, decontamination)
        if name == "counts_add_up":
            outcome = quality.counts_add_up(corpus.lake, corpus.fetched_path)
        else:
            outcome = quality.CHECKS[name](corpus.lake)
        return dg.AssetCheckResult(passed=outcome.passed, severity=_SEVERITY[name], metadata=outcome.facts)

    return _run


SNAPSHOT_CHECKS = [_check(name) for name in _SEVERITY]
