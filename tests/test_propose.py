"""The proposers of the next candidate: one interface, a chain built from a study's settings, and
a study that asks whatever chain it is given."""

from __future__ import annotations

from search_fakes import FakeMeasure, add_model, cpu_env

from autotune.search.propose import TPE, Baselines, Chain, Exhaustive, KnowledgeFirst, Proposal, Proposer, StudyState, chain_for
from autotune.search.study import SearchSettings, StudySearch
from autotune.store import Store


def kinds(chain: Chain) -> list[type]:
    return [type(p) for p in chain.proposers]


def test_the_chain_of_each_setting() -> None:
    options = {"tolerance": 0.03, "startup_trials": 4}
    assert kinds(chain_for((), knowledge=True, explore=False, exhaustive=False, **options)) == [Baselines, KnowledgeFirst]
    assert kinds(chain_for((), knowledge=True, explore=True, exhaustive=False, **options)) == [Baselines, KnowledgeFirst, TPE]
    assert kinds(chain_for((), knowledge=False, explore=False, exhaustive=False, **options)) == [Baselines, TPE]
    assert kinds(chain_for((), knowledge=True, explore=False, exhaustive=True, **options)) == [Baselines, Exhaustive]


def test_a_chain_takes_the_first_proposal_and_skips_what_is_measured_or_claimed(store: Store) -> None:
    search = StudySearch(
        store, add_model(store), cpu_env(), store.record_environment(cpu_env()), SearchSettings(seed=1), measure=FakeMeasure()
    )
    state = search.state(search.progress())
    first = search.space.baselines[0].candidate

    class Nothing(Proposer):
        def propose(self, state: StudyState) -> Proposal | None:
            return None

    assert Chain(Nothing()).propose(state) is None
    assert Chain(Nothing(), Baselines(search.space.baselines)).propose(state) == Proposal(first, "baseline", "transformers defaults")
    claimed = search.state(search.progress(), {first.key()})
    assert first not in claimed.left() and Baselines((search.space.baselines[0],)).propose(claimed) is None
    # the study asks its chain: the same answer as the chain of its settings
    assert search.next_candidate(search.progress()) == (first, "baseline", "transformers defaults")
    ranked = Exhaustive(ranked=False).propose(claimed)
    assert ranked is not None and ranked.candidate == claimed.left()[0] and ranked.origin == "search"
