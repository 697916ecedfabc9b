"""The ask/tell activation searches: the memo, the exact LAHC and SA rules, GA generations,
random search, determinism and checkpoint round-trips. Pure Python, milliseconds."""

import json
import math
import pickle
import random
import subprocess
import sys

import pytest

from safs.search import (
    LAHC,
    OPTIMIZERS,
    GeneticAlgorithm,
    GenomeSpace,
    RandomSearch,
    SimulatedAnnealing,
    create_optimizer,
    list_optimizers,
    optimizer_options,
)
from safs.search.base import neighbour


def make_space(n_slots: int, n_ops: int, baseline: str | None = "relu") -> GenomeSpace:
    return GenomeSpace(tuple(f"s{i}" for i in range(n_slots)), tuple(f"op{j}" for j in range(n_ops)), baseline)


def separable(space: GenomeSpace, seed: int = 1):
    """score = mean over slots of table[slot][op]: random in [0, 1], a unique optimum."""
    rng = random.Random(seed)
    table = {s: {o: rng.random() for o in space.choices} for s in space.slots}
    optimum = {s: max(table[s], key=table[s].get) for s in space.slots}
    return (lambda g: sum(table[s][g[s]] for s in space.slots) / len(space.slots)), optimum


def ask_all(opt):
    asked = []
    while (item := opt.ask()) is not None:
        asked.append(item)
    return asked


def run(opt, score_fn, record=None):
    """Ask until None, tell everything outstanding, repeat until done."""
    while not opt.done():
        asked = ask_all(opt)
        assert asked or opt.done(), "neither asking nor done: deadlock"
        for token, genome in asked:
            if record is not None:
                record.append((token, genome))
            opt.tell(token, score_fn(genome))
    assert opt.ask() is None
    return opt


def trained(opt):
    return [h for h in opt.history if not h["cached"]]


# ------------------------------------------------------------------------------------ space
def test_genome_space():
    space = make_space(3, 4)
    assert space.baseline_genome() == {"s0": "relu", "s1": "relu", "s2": "relu"}
    assert space.size == 64
    g = space.random_genome(random.Random(0))
    assert list(g) == list(space.slots) and set(g.values()) <= set(space.choices)
    assert space.key({"s2": "a", "s0": "b", "s1": "c"}) == ("b", "c", "a")
    with pytest.raises(ValueError, match="baseline"):
        make_space(2, 2, baseline=None).baseline_genome()
    with pytest.raises(ValueError):
        GenomeSpace(("a",), ())
    with pytest.raises(ValueError):
        GenomeSpace(("a", "a"), ("x",))


def test_neighbour_move_uses_rng_in_order():
    space = make_space(5, 7)
    current = space.random_genome(random.Random(3))
    rng, probe = random.Random(11), random.Random(11)
    expected = dict(current)
    expected[space.slots[probe.randrange(5)]] = probe.choice(space.choices)
    i, j = probe.randrange(5), probe.randrange(5)
    expected[space.slots[i]], expected[space.slots[j]] = expected[space.slots[j]], expected[space.slots[i]]
    assert neighbour(space, current, rng) == expected
    assert rng.getstate() == probe.getstate()


# ------------------------------------------------------------------------ finding optima
@pytest.mark.parametrize("name, options, shape", [
    ("lahc", {"steps_minimum": 150}, (4, 6)),
    ("lahc", {"steps_minimum": 60, "neighbours": 4}, (4, 6)),
    ("sa", {"steps": 200}, (4, 6)),
    ("ga", {"population": 20, "generations": 30}, (4, 6)),
    ("random", {"samples": 16}, (2, 4)),
])
def test_finds_the_optimum_of_a_separable_table(name, options, shape):
    space = make_space(*shape)
    score, optimum = separable(space)
    opt = run(create_optimizer(name, space, 0, options), score)
    genome, value = opt.best()
    assert genome == optimum and value == pytest.approx(score(optimum))
    keys = [space.key(h["genome"]) for h in trained(opt)]
    assert len(keys) == len(set(keys)), "a genome was trained twice"


def test_random_search_enumerates_a_small_space_through_the_memo():
    space = make_space(2, 4)
    score, _ = separable(space)
    opt = RandomSearch(space, seed=5, samples=16)
    first = ask_all(opt)
    assert len(first) > 1 and opt.max_parallel() is None  # all may run at once
    for token, genome in first:
        opt.tell(token, score(genome))
    run(opt, score)
    assert {space.key(h["genome"]) for h in trained(opt)} == {(a, b) for a in space.choices for b in space.choices}
    assert len(trained(opt)) == 16


def test_random_search_baseline_first():
    space = make_space(3, 5)
    opt = RandomSearch(space, seed=0, samples=4, include_baseline=True)
    assert opt.ask()[1] == space.baseline_genome()


@pytest.mark.parametrize("name, options", [
    ("lahc", {"steps_minimum": 1000, "max_steps": 5000}),
    ("lahc", {"neighbours": 3, "start": "baseline"}),
    ("sa", {"steps": 500}),
    ("ga", {"population": 4, "generations": 1000}),
    ("random", {"samples": 21}),
])
def test_a_tiny_space_finishes(name, options):
    space = make_space(1, 2)
    opt = run(create_optimizer(name, space, 0, options), lambda g: 0.5)
    assert opt.done()
    assert len(trained(opt)) <= 3  # op0, op1 (and the baseline for start="baseline")


def test_duplicates_in_a_batch_wait_for_their_outstanding_twin():
    space = make_space(3, 2)  # 8 genomes: a random population of 8 repeats some
    score, _ = separable(space)
    ga = GeneticAlgorithm(space, 0, population=8, generations=1)
    asked = ask_all(ga)
    assert len(asked) == len({space.key(g) for _, g in asked}) < 8  # each genome handed out once
    assert not ga.done()
    for token, genome in asked:
        ga.tell(token, score(genome))
    assert ga.done() and ga.generation == 1 and len(ga.history) == 8  # twins scored as cached
    assert ga.individual_scores == [score(g) for g in ga.individuals]


def test_waits_while_the_rest_of_the_space_is_outstanding():
    opt = RandomSearch(make_space(1, 2), 0, samples=21)
    asked = ask_all(opt)
    assert len(asked) == 2 and not opt.done()
    for token, _ in asked:
        opt.tell(token, 0.5)
    assert opt.done()


def test_an_optimizer_that_only_repeats_itself_is_stopped():
    space = make_space(6, 8)  # far from exhausted
    ga = GeneticAlgorithm(space, 0, population=1, generations=10**9, mutation_rate=0.0)
    run(ga, lambda g: 0.5)
    assert ga.done() and len(trained(ga)) == 1


# --------------------------------------------------------------------- LAHC exact rules
BIG = make_space(8, 13)


SCRIPT_SEED = 12  # its moves never revisit a genome in these scripts (asserted below)


def scripted_lahc(scores, **options):
    """Drive LAHC with one predetermined score per trained candidate; snapshot after each tell."""
    opt = LAHC(BIG, SCRIPT_SEED, **options)
    snaps = []
    for value in scores:
        item = opt.ask()
        if item is None:
            break
        token, genome = item
        opt.tell(token, value)
        snaps.append({"step": opt.step, "accepted": opt.current == genome, "current_score": opt.current_score,
                      "late": list(opt.late_scores), "idle": opt.idle, "done": opt.done()})
    assert not any(h["cached"] for h in opt.history), "pick another seed: a duplicate consumed no score"
    return opt, snaps


def test_lahc_stops_at_the_first_non_improving_move_after_the_minimum():
    scores = [0.10 + 0.01 * k for k in range(26)] + [0.0] + [0.99] * 10
    opt, snaps = scripted_lahc(scores)
    assert snaps[0] == {"step": 0, "accepted": True, "current_score": 0.10, "late": [0.10] * 3, "idle": 0,
                        "done": False}
    for k in range(1, 26):
        assert snaps[k]["step"] == k and snaps[k]["accepted"] and snaps[k]["idle"] == 0
        assert snaps[k]["late"][k % 3] == scores[k] and not snaps[k]["done"]
    assert snaps[25]["late"] == [scores[24], scores[25], scores[23]]
    last = snaps[26]
    assert last["step"] == 26 and not last["accepted"] and last["idle"] == 1
    assert last["current_score"] == scores[25] and last["late"] == [scores[24], scores[25], scores[25]]
    assert last["done"] and len(snaps) == 27 and opt.ask() is None
    assert opt.best()[1] == scores[25]


def test_lahc_late_acceptance_rule_and_history_update():
    scores = [0.5, 0.9, 0.6, 0.55, 0.56, 0.4, 0.56]
    _, s = scripted_lahc(scores)
    expected = [  # (accepted, current score, late scores, idle)
        (True, 0.5, [0.5, 0.5, 0.5], 0),
        (True, 0.9, [0.5, 0.9, 0.5], 0),
        (True, 0.6, [0.5, 0.9, 0.6], 1),    # worse than current, but beats late[2]
        (True, 0.55, [0.55, 0.9, 0.6], 2),  # beats late[0]
        (True, 0.56, [0.55, 0.9, 0.6], 0),  # beats current; late[1] only ever improves
        (False, 0.56, [0.55, 0.9, 0.6], 1),
        (True, 0.56, [0.56, 0.9, 0.6], 2),  # equal to current: accepted, but idle
    ]
    assert [(x["accepted"], x["current_score"], x["late"], x["idle"]) for x in s] == expected


def test_lahc_never_stops_before_steps_minimum():
    _, snaps = scripted_lahc([0.5] + [0.4] * 40)
    assert all(not x["accepted"] and x["idle"] == x["step"] for x in snaps[1:])
    assert [x["done"] for x in snaps].index(True) == 21 and len(snaps) == 22

    _, snaps = scripted_lahc([0.5] + [0.4] * 20 + [0.6] + [0.3] * 5)
    assert not snaps[21]["done"] and snaps[21]["idle"] == 0
    assert snaps[22]["done"] and len(snaps) == 23


def test_lahc_idle_fraction_and_max_steps():
    # 30 improving moves, then idle j at step 30+j: stops once j > 0.5 * (30 + j), i.e. j = 31
    _, snaps = scripted_lahc([0.1 + 0.001 * k for k in range(31)] + [0.0] * 100, idle_fraction=0.5)
    assert snaps[-1]["step"] == 61 and snaps[-1]["idle"] == 31 and snaps[-1]["done"]
    assert not snaps[-2]["done"]
    _, snaps = scripted_lahc([0.1 * k for k in range(30)], max_steps=10)
    assert snaps[-1]["step"] == 10 and snaps[-1]["done"] and len(snaps) == 11


def test_lahc_neighbour_batches_use_the_best_of_the_batch():
    opt = LAHC(BIG, 0, neighbours=3)
    assert opt.max_parallel() == 3
    (t0, g0), = ask_all(opt)  # the initial genome alone
    opt.tell(t0, 0.5)
    batch = ask_all(opt)
    assert len(batch) == 3 and not opt.done()
    for (token, _), value in reversed(list(zip(batch, [0.2, 0.7, 0.7]))):  # tell order is irrelevant
        opt.tell(token, value)
    assert len({BIG.key(g) for _, g in batch}) == 3
    assert opt.step == 1 and opt.current == batch[1][1] and opt.current_score == 0.7  # tie: lowest token
    assert opt.late_scores == [0.5, 0.7, 0.5]
    kept = opt.current
    batch = ask_all(opt)
    assert len(batch) == 3
    for (token, _), value in zip(batch, [0.1, 0.3, 0.2]):
        opt.tell(token, value)
    assert opt.step == 2 and opt.current == kept and opt.current_score == 0.7 and opt.idle == 1
    assert opt.late_scores == [0.5, 0.7, 0.7]  # late[2] takes the (kept) current score


# --------------------------------------------------------------------- SA exact rules
def test_sa_temperature_schedule():
    sa = SimulatedAnnealing(BIG, 0, steps=5, t_start=0.02, t_end=0.0005)
    temps = [sa.temperature(k) for k in range(5)]
    assert temps[0] == pytest.approx(0.02) and temps[-1] == pytest.approx(0.0005)
    assert all(a > b for a, b in zip(temps, temps[1:]))
    assert SimulatedAnnealing(BIG, 0, steps=1).temperature(0) == 0.02
    assert math.exp(-0.02 / temps[0]) == pytest.approx(1 / math.e)


def test_sa_acceptance_uses_one_draw_and_the_temperature():
    sa = SimulatedAnnealing(BIG, 7, steps=8, t_start=0.02, t_end=0.0005)
    token, genome = sa.ask()
    sa.tell(token, 0.5)
    for k, value in enumerate([0.49, 0.47, 0.52, None, 0.515, 0.51, 0.51, 0.3]):
        token, genome = sa.ask()
        assert sa.ask() is None  # sequential
        before, score_before = sa.current, sa.current_score
        probe = random.Random()
        probe.setstate(sa.rng.getstate())
        sa.tell(token, value)
        if value is None:
            accept = False
        elif value >= score_before:
            accept = True
        else:
            accept = probe.random() < math.exp(-(score_before - value) / sa.temperature(k))
        assert sa.current == (genome if accept else before)
        assert sa.rng.getstate() == probe.getstate()  # one draw, and only for a finite worse candidate
    assert sa.done() and sa.step == 8 and len(trained(sa)) == 9 and not any(h["cached"] for h in sa.history)


def test_sa_hot_accepts_worse_moves_cold_does_not():
    space = make_space(6, 10)
    score, _ = separable(space, seed=3)

    def worse_accepted(t):
        sa = SimulatedAnnealing(space, 0, steps=200, t_start=t, t_end=t)
        worse = accepted = 0
        while not sa.done():
            item = sa.ask()
            if item is None:
                continue  # a cached duplicate was observed inside ask
            token, genome = item
            before = sa.current_score
            sa.tell(token, score(genome))
            if score(genome) < before:
                worse += 1
                accepted += sa.current == genome
        return accepted / worse

    assert worse_accepted(100.0) > 0.95
    assert worse_accepted(1e-9) == 0


# ------------------------------------------------------------------------------ GA
def test_ga_generations_are_batches_with_elitism():
    space = make_space(6, 10)
    score, _ = separable(space)
    ga = GeneticAlgorithm(space, 2, population=6, generations=3)
    assert ga.max_parallel() == 6
    gen0 = ask_all(ga)
    assert len(gen0) == 6 and ga.ask() is None
    for token, genome in gen0[:-1]:
        ga.tell(token, score(genome))
    assert ga.ask() is None and not ga.done() and ga.generation == 0
    ga.tell(gen0[-1][0], score(gen0[-1][1]))
    assert ga.generation == 1
    elite = max((g for _, g in gen0), key=score)
    assert ga.individuals[0] == elite
    gen1 = ask_all(ga)
    assert elite not in [g for _, g in gen1]  # answered by the memo, not retrained
    assert any(h["cached"] and h["genome"] == elite for h in ga.history)
    for token, genome in gen1:
        ga.tell(token, score(genome))
    run(ga, score)
    assert ga.generation == 3 and ga.done()


def test_ga_mutation_and_crossover():
    space = make_space(5, 7, baseline="relu")
    assert GeneticAlgorithm(space, 0).mutation_rate == pytest.approx(1 / 5)
    score, _ = separable(space)
    ga = GeneticAlgorithm(space, 0, population=8, generations=10, mutation_rate=1.0)
    run(ga, score)
    assert all(set(h["genome"].values()) <= set(space.choices) for h in ga.history)

    # no mutation, no crossover: every child is a copy of a parent
    ga = GeneticAlgorithm(space, 1, population=8, generations=2, mutation_rate=0.0, crossover_probability=0.0)
    parents = [g for _, g in ask_all(ga)]
    for token, genome in list(ga.outstanding().items()):
        ga.tell(token, score(genome))
    assert all(child in parents for child in ga.individuals)

    # crossover only: each gene comes from a parent at the same slot, and genes get mixed
    ga = GeneticAlgorithm(space, 1, population=8, generations=2, mutation_rate=0.0, crossover_probability=1.0)
    parents = [g for _, g in ask_all(ga)]
    for token, genome in list(ga.outstanding().items()):
        ga.tell(token, score(genome))
    for child in ga.individuals:
        assert all(any(p[s] == child[s] for p in parents) for s in space.slots)
    assert any(child not in parents for child in ga.individuals)


# ------------------------------------------------------------------ shared behaviour
ALL = [
    ("lahc", {}),
    ("lahc", {"neighbours": 3}),
    ("random", {}),
    ("ga", {}),
    ("ga", {"population": 6, "generations": 4}),
    ("sa", {}),
]


def failing_score(space):
    score, _ = separable(space, seed=9)

    def fn(genome):
        if genome["s0"] == "op0":
            return None
        if genome["s1"] == "op1":
            return float("nan")
        return score(genome)
    return fn


@pytest.mark.parametrize("name, options", ALL)
def test_same_seed_same_candidates(name, options):
    space = make_space(6, 8)
    score = failing_score(space)

    def sequence(seed):
        record = []
        run(create_optimizer(name, space, seed, options), score, record)
        return [(t, space.key(g)) for t, g in record]

    assert sequence(3) == sequence(3)
    assert sequence(3) != sequence(4)


@pytest.mark.parametrize("name, options", ALL)
def test_state_round_trip_with_outstanding_tokens(name, options):
    space = make_space(6, 8)
    score = failing_score(space)
    a = create_optimizer(name, space, 3, options)
    for _ in range({"random": 0, "ga": 1}.get(name, 3)):  # leave work outstanding mid-run
        for token, genome in ask_all(a):
            a.tell(token, score(genome))
    pending = ask_all(a)
    assert pending
    for token, genome in pending[: len(pending) // 2]:
        a.tell(token, score(genome))
    state = a.state_dict()
    assert a.outstanding()
    restored = []
    for data in (json.loads(json.dumps(state, allow_nan=False)), pickle.loads(pickle.dumps(state))):
        b = create_optimizer(name, space, 999, options)
        b.load_state_dict(data)
        assert b.outstanding() == a.outstanding()
        restored.append(b)
    tails = []
    for opt in [a, *restored]:
        for token, genome in opt.outstanding().items():
            opt.tell(token, score(genome))
        record = []
        run(opt, score, record)
        tails.append((record, opt.history, opt.best(), opt.state_dict()))
    assert tails[0] == tails[1] == tails[2]


@pytest.mark.parametrize("name, options", ALL)
def test_failures_are_never_best_and_the_search_goes_on(name, options):
    space = make_space(6, 8)
    score = failing_score(space)
    opt = run(create_optimizer(name, space, 1, options), score)
    failed = [h for h in trained(opt) if score(h["genome"]) is None or math.isnan(score(h["genome"]))]
    assert all(h["score"] is None for h in failed)
    genome, value = opt.best()
    assert genome["s0"] != "op0" and genome["s1"] != "op1" and math.isfinite(value)
    assert len(trained(opt)) > len(failed)

    # everything fails: no best, but the search still finishes
    opt = run(create_optimizer(name, space, 1, options), lambda g: float("inf"))
    assert opt.best() is None and opt.done()


@pytest.mark.parametrize("name, options", ALL)
def test_tell_is_idempotent(name, options):
    space = make_space(6, 8)
    opt = create_optimizer(name, space, 0, options)
    token, genome = opt.ask()
    opt.tell(token, 0.4)
    opt.tell(token, 0.9)  # delivered again after a restore: ignored
    opt.tell(12345, 1.0)  # never asked: ignored
    assert len(opt.history) == 1 and opt.history[0] == {"token": token, "genome": genome, "score": 0.4,
                                                        "cached": False}
    assert opt.best() == (genome, 0.4)


def test_tokens_count_up_in_ask_order():
    opt = RandomSearch(make_space(6, 8), 0, samples=5)
    assert [t for t, _ in ask_all(opt)] == [0, 1, 2, 3, 4]


# -------------------------------------------------------------------------- registry
def test_registry_and_options():
    assert list_optimizers() == ["ga", "lahc", "oneshot", "random", "sa"] and set(OPTIMIZERS) == set(list_optimizers())
    assert optimizer_options("lahc") == {"history_length": 3, "steps_minimum": 20, "idle_fraction": 0.02,
                                         "max_steps": 200, "start": "random", "neighbours": 1}
    assert optimizer_options("ga")["mutation_rate"] is None
    space = make_space(3, 4)
    opt = create_optimizer("sa", space, 0, {"steps": 3})
    assert isinstance(opt, SimulatedAnnealing) and opt.steps == 3
    with pytest.raises(ValueError, match=r"^unknown search algorithm 'x'; accepted: ga, lahc, oneshot, random, sa$"):
        create_optimizer("x", space, 0, {})
    with pytest.raises(ValueError, match=r"'steps'.*accepted: history_length, steps_minimum"):
        create_optimizer("lahc", space, 0, {"steps": 3})
    with pytest.raises(ValueError, match="start"):
        create_optimizer("lahc", space, 0, {"start": "middle"})
    with pytest.raises(ValueError, match="baseline"):
        create_optimizer("sa", make_space(3, 4, baseline=None), 0, {"start": "baseline"})
    with pytest.raises(ValueError, match="different genome space"):
        create_optimizer("lahc", make_space(3, 5), 0, {}).load_state_dict(create_optimizer("lahc", space, 0, {}).state_dict())


def test_import_is_pure_python():
    code = "import sys, safs.search; print(sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_one_rule_for_what_counts_as_a_score():
    from safs.search.base import FAILED, finite_score, sanitize

    assert finite_score(0.5) == 0.5 and finite_score(1) == 1.0 and finite_score("0.25") == 0.25
    for junk in (None, True, False, "high", float("nan"), float("inf"), -float("inf"), [1]):
        assert finite_score(junk) is None, junk
    assert sanitize(True) == FAILED
