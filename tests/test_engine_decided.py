"""``DecisionTable.decided()``: the verdicts a table computed when it was filled, which
``patchctl diff``'s comparison reads instead of deciding every version again, are the engine's
own (``decide``'s approved and rejected, ``not_applicable`` for an approved update), over every
fill of the table; versions no filled instance uses read False."""

from __future__ import annotations

from bench.synthetic_fleet import NOW, Member
from reconciler.api.inventory import AvailableUpdate
from reconciler.evaluation.engine import not_applicable
from reconciler.evaluation.tables import FleetTables, VersionIndex
from tests.test_engine_summary import fleet

__all__ = ["fleet"]  # the fixture, used by name


def test_decided_equals_the_engine_over_two_fills(fleet: list[Member]) -> None:
    index = VersionIndex()
    tables = FleetTables(index)
    baseline = fleet[0].baseline
    mine = [m for m in fleet if m.baseline is baseline]
    first, second = mine[: len(mine) // 2], mine[len(mine) // 2 :]
    for batch in (first, second):  # the second fill brings versions the first did not have
        tables.summaries([(m.baseline, index.index(m.inventory)) for m in batch], NOW)
    other = next(m for m in fleet if m.baseline is not baseline)
    index.index(other.inventory)  # interned, but no filled instance of this table uses it
    index.sync()
    table = tables.table(baseline, first[0].inventory, NOW)
    decided = table.decided()
    used = {id(p) for m in mine for p in (*m.inventory.updates, *m.inventory.installed)}
    approved = rejected = applicable = inapplicable = 0
    for number, pkg in enumerate(index.versions):
        found = (decided.approved[number], decided.rejected[number], decided.applicable[number])
        if id(pkg) not in used:
            assert found == (False, False, False)
            continue
        approval = table.decider.decide(pkg)
        update = approval.approved and isinstance(pkg, AvailableUpdate)
        pinnable = update and not_applicable(table.decider, pkg) is None  # type: ignore[arg-type]
        assert found == (approval.approved, approval.rejected, pinnable)
        approved += approval.approved
        rejected += approval.rejected
        applicable += pinnable
        inapplicable += update and not pinnable
    # every verdict kind occurs, or this test proved little
    assert approved > applicable > 0 and rejected and inapplicable, (rejected, inapplicable)
    assert len(decided.approved) == len(index.versions)
