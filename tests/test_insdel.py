"""Insertion and deletion (rediff.discrete.insdel): the forward process against brute-force
enumeration, the bound against exact likelihoods on an enumerable toy, the reverse model as
a distribution, training on arithmetic progressions, and bad input."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from rediff.data.sequences import ARITHMETIC_CHARACTERS, arithmetic, is_progression, lines
from rediff.discrete.insdel import InsDelProcess, geometric_entropy
from rediff.discrete.insdel_model import (
    InsDelModel,
    InsDelObjective,
    LengthError,
    elbo,
    insdel_net,
    padded,
    sequences,
)

TOTAL = 3  # insertions enumerated per step (all gaps together)


def _gap_vectors(gaps: int, p_insert: float, most: int):
    """Every way to put at most ``most`` insertions into ``gaps`` gaps, with its probability
    prod_g (1 - p) p^{k_g}."""
    for total in range(most + 1 if p_insert > 0 else 1):
        for bars in itertools.combinations(range(total + gaps - 1), gaps - 1):
            edges = (-1, *bars, total + gaps - 1)
            ks = [b - a - 1 for a, b in itertools.pairwise(edges)]
            yield ks, (1 - p_insert) ** gaps * p_insert**total


def outcomes(process: InsDelProcess, y: tuple, t: int, total: int = TOTAL) -> dict[tuple, float]:
    """Brute force over every way step t can act on y (each surviving token's fate, each
    gap's insertions, at most TOTAL in all): the probability of each resulting x_t, summed
    over all the ways (alignments) that give it."""
    p_insert, p_delete, p_replace = process.rates(t)
    K, INS, DEL = process.categories, process.ins_token, process.del_token
    fates = []
    for u in (v for v in y if v != DEL):
        if u == INS:
            fates.append([(w, 1 / K) for w in range(K)])
        else:
            kept = [(w, (1 - p_delete - p_replace) * (u == w) + p_replace / K) for w in range(K)]
            fates.append([(DEL, p_delete), *kept])
    gap_vectors = list(_gap_vectors(len(fates) + 1, p_insert, total))
    out: dict[tuple, float] = {}
    for images in itertools.product(*fates):
        p_images = math.prod(pw for _, pw in images)
        if p_images == 0:
            continue
        for ks, p_gaps in gap_vectors:
            x = [INS] * ks[0]
            for (w, _), k in zip(images, ks[1:], strict=True):
                x += [w] + [INS] * k
            out[tuple(x)] = out.get(tuple(x), 0.0) + p_images * p_gaps
    return out


def left_out(process: InsDelProcess, y: tuple, t: int, total: int = TOTAL) -> float:
    """The mass ``outcomes`` leaves out: more than TOTAL insertions, whose count over the
    m + 1 gaps is negative binomial: 1 - sum_{k <= TOTAL} C(k + m, m) (1 - p)^(m+1) p^k."""
    p, m = process.rates(t)[0], sum(v != process.del_token for v in y)
    if p == 0:
        return 0.0
    return 1 - sum(math.comb(k + m, m) * (1 - p) ** (m + 1) * p**k for k in range(total + 1))


@pytest.fixture
def process() -> InsDelProcess:
    # two values, five steps: insertions at steps 1-2, everything deleted at step 4
    return InsDelProcess.make(2, T=5, insert=1.5, replace=0.3)


def _all_states(K: int, length: int):
    """Every sequence over values, INS and DEL up to ``length`` tokens."""
    for n in range(length + 1):
        yield from itertools.product(range(K + 2), repeat=n)


def test_one_step_likelihood_equals_enumeration_over_alignments(process):
    for t in (1, 2, 3):
        for y in _all_states(2, 3):
            brute = outcomes(process, y, t)
            for x, prob in brute.items():
                closed = process.step_log_prob(np.array(y), np.array(x), t)
                assert math.isclose(math.exp(closed), prob, rel_tol=1e-12)
            assert sum(brute.values()) == pytest.approx(1 - left_out(process, y, t), abs=1e-12)


def test_unreachable_sequences_have_zero_probability(process):
    INS, DEL = process.ins_token, process.del_token
    # a DEL cannot come from an inserted token; x_t cannot lose an aligned token
    assert process.step_log_prob(np.array([INS]), np.array([DEL]), 2) == -math.inf
    assert process.step_log_prob(np.array([0, 1]), np.array([0]), 2) == -math.inf


def test_step_entropy_is_the_expected_surprise_of_the_sampler(process):
    rng, n = np.random.default_rng(2), 20000
    for t, y in [(1, (0, 1)), (2, (1, process.ins_token, process.del_token, 0)), (3, ())]:
        y = np.array(y, dtype=np.int64)
        surprise = np.array(
            [-process.step_log_prob(y, process.step(y, t, rng), t) for _ in range(n)]
        )
        se = surprise.std() / math.sqrt(n)
        assert abs(process.step_entropy(y, t) - surprise.mean()) < 4 * se + 1e-12


def test_forward_sampler_matches_closed_form(process):
    rng = np.random.default_rng(0)
    y, t, n = np.array([0, process.ins_token, 1]), 2, 40000
    counts: dict[tuple, int] = {}
    for _ in range(n):
        x = tuple(process.step(y, t, rng).tolist())
        counts[x] = counts.get(x, 0) + 1
    for x, c in sorted(counts.items(), key=lambda kv: -kv[1])[:8]:
        p = math.exp(process.step_log_prob(y, np.array(x), t))
        assert abs(c / n - p) < 5 * math.sqrt(p * (1 - p) / n)


@functools.cache
def _marginals(
    process: InsDelProcess, x0: tuple, total: int = TOTAL
) -> tuple[list[dict[tuple, float]], list[float]]:
    """q(x_t | x_0) for t = 0..T, composed from the closed-form one-step likelihoods over the
    enumerated reachable sequences, and the mass the enumeration left out up to each t."""
    out, lost = [{x0: 1.0}], [0.0]
    for t in range(1, process.num_steps + 1):
        nxt: dict[tuple, float] = {}
        lost.append(
            lost[-1] + sum(py * left_out(process, y, t, total) for y, py in out[-1].items())
        )
        for y, py in out[-1].items():
            for x in outcomes(process, y, t, total):
                q = math.exp(process.step_log_prob(np.array(y), np.array(x), t))
                nxt[x] = nxt.get(x, 0.0) + py * q
        out.append(nxt)
    return out, lost


def test_composed_steps_sum_to_one_and_end_empty():
    process = InsDelProcess.make(2, T=5, insert=1.5)
    for x0 in [(), (0,), (1, 0)]:
        marginals, lost = _marginals(process, x0, total=2)
        for q_t, lost_t in zip(
            marginals, lost, strict=True
        ):  # every left-out path is accounted for
            assert sum(q_t.values()) + lost_t == pytest.approx(1.0, abs=1e-12)
        assert set(marginals[-1]) == {()}  # x_T is the empty sequence


def test_schedule_empties_every_sampled_sequence():
    process = InsDelProcess.make(5, T=12, insert=2.0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        path = process.trajectory(rng.integers(5, size=rng.integers(0, 30)), process.num_steps, rng)
        assert path[-1].shape == (0,)
        assert set(path[-2].tolist()) <= {process.del_token}


# ---- the bound on an enumerable toy ----------------------------------------------------------


def _data(weights) -> dict[tuple, float]:
    support = [(0,), (1, 0), (0, 1)]
    return dict(zip(support, np.asarray(weights) / np.sum(weights), strict=True))


def _reverse_tables(process, data, total):
    """Exact p(x_{t-1} | x_t) of the data distribution ``data``, per step, by enumeration."""
    joint = [dict() for _ in range(process.num_steps + 1)]  # joint[t][(y, x)] = q(x_{t-1}=y, x_t=x)
    for x0, w in data.items():
        marginals, _ = _marginals(process, x0, total)
        for t in range(1, process.num_steps + 1):
            for y, py in marginals[t - 1].items():
                for x in outcomes(process, y, t, total):
                    q = math.exp(process.step_log_prob(np.array(y), np.array(x), t))
                    joint[t][(y, x)] = joint[t].get((y, x), 0.0) + w * py * q
    tables = [None]
    for t in range(1, process.num_steps + 1):
        totals: dict[tuple, float] = {}
        for (_, x), p in joint[t].items():
            totals[x] = totals.get(x, 0.0) + p
        tables.append({(y, x): p / totals[x] for (y, x), p in joint[t].items()})
    return tables


def _bound(process, tables, x0, total) -> float:
    """E_q sum_t [-H(q(. | x_{t-1})) - log p(x_{t-1} | x_t)], exactly, by enumeration."""
    bound, (marginals, _) = 0.0, _marginals(process, x0, total)
    for t in range(1, process.num_steps + 1):
        for y, py in marginals[t - 1].items():
            bound += py * -process.step_entropy(np.array(y), t)
            for x in outcomes(process, y, t, total):
                q = math.exp(process.step_log_prob(np.array(y), np.array(x), t))
                bound -= py * q * math.log(tables[t][(y, x)])
    return bound


def _model_log_prob(process, tables, x0) -> float:
    """log p(x_0) of the reverse chain ``tables`` from the empty x_T, by enumeration."""
    p = {(): 1.0}
    for t in range(process.num_steps, 0, -1):
        nxt: dict[tuple, float] = {}
        for (y, x), r in tables[t].items():
            if x in p:
                nxt[y] = nxt.get(y, 0.0) + p[x] * r
        p = nxt
    return math.log(p[x0])


def _tempered(process, tables, power: float):
    """Each reverse step's p(x_{t-1} | x_t) raised to ``power`` and renormalised: a model
    that is not the exact reverse of any data distribution (no bound of it is tight)."""
    out = [None]
    for table in tables[1:]:
        totals: dict[tuple, float] = {}
        for (_y, x), p in table.items():
            totals[x] = totals.get(x, 0.0) + p**power
        out.append({(y, x): p**power / totals[x] for (y, x), p in table.items()})
    return out


def test_bound_is_exact_for_the_exact_reverse_and_above_nll_otherwise():
    process = InsDelProcess.make(2, T=4, insert=0.3, replace=0.2)
    data, total = _data([0.5, 0.3, 0.2]), 4
    exact = _reverse_tables(process, data, total)
    other = _tempered(process, exact, 0.5)
    for x0, w in data.items():
        # the enumeration leaves out paths of mass `lost`, each log-ratio below 40 in size
        tolerance = 40 * _marginals(process, x0, total)[1][-1] + 1e-12
        assert _bound(process, exact, x0, total) == pytest.approx(-math.log(w), abs=tolerance)
        nll = -_model_log_prob(process, other, x0)
        assert _bound(process, other, x0, total) - nll > 1e-3 + tolerance  # strictly above


# ---- the reverse model ---------------------------------------------------------------------


def _model(K=2, max_length=3, T=5, seed=0, width=32, depth=1, **make) -> InsDelModel:
    torch.manual_seed(seed)
    process = InsDelProcess.make(K, T=T, **make)
    net = insdel_net(process, max_length, width=width, depth=depth, heads=2)
    return InsDelModel(net, process, max_length)


def _predecessors(model: InsDelModel, x: tuple, t: int, most: int):
    """Every x_{t-1} that step t can turn into x (up to ``most`` DEL per gap)."""
    p = model.process
    anchors = [v for v in x if v != p.ins_token]
    behind = [
        range(p.categories) if v == p.del_token else [*range(p.categories), p.ins_token]
        for v in anchors
    ]
    for prevs in itertools.product(*behind):
        for counts in itertools.product(range(most + 1), repeat=len(anchors) + 1):
            y = []
            for c, v in zip(counts, [*prevs, None], strict=True):
                y += [p.del_token] * c + ([] if v is None else [v])
            yield tuple(y)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_reverse_model_is_a_distribution_over_predecessors(t):
    model = _model(replace=0.3)
    p = model.process
    most = 14  # counts above C = 4 follow the tail 2^-(j+1): the left-out mass is < 2^-10
    for x in [(), (0,), (p.ins_token, 1), (p.del_token, 0, p.ins_token)]:
        ys = list(_predecessors(model, x, t, most))
        with torch.no_grad():
            log_p = model.step_log_prob(
                [np.array(y) for y in ys], [np.array(x)] * len(ys), torch.tensor(t)
            )
        total = float(log_p.exp().sum())
        assert 1 - (len(x) + 1) * 2.0**-10 <= total <= 1 + 1e-9


def test_reverse_sampler_draws_from_the_reverse_model():
    model = _model(max_length=40, replace=0.3)
    p, t, n = model.process, 3, 6000
    x = (p.del_token, 0, p.ins_token)
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple, int] = {}
    for _ in range(n // 500):
        for y in model.reverse_step([np.array(x)] * 500, t, g):
            counts[tuple(y.tolist())] = counts.get(tuple(y.tolist()), 0) + 1
    top = sorted(counts, key=counts.get, reverse=True)[:6]
    with torch.no_grad():
        log_p = model.step_log_prob([np.array(y) for y in top], [np.array(x)] * 6, torch.tensor(t))
    for y, lp in zip(top, log_p.tolist(), strict=True):
        prob = math.exp(lp)
        assert abs(counts[y] / n - prob) < 5 * math.sqrt(prob * (1 - prob) / n)


def test_first_step_reverse_gives_plain_values():
    model = _model(max_length=6)
    p = model.process
    g = torch.Generator().manual_seed(0)
    ys = model.reverse_step([np.array([p.del_token, 1, p.ins_token, 0])] * 50, 1, g)
    for y in ys:  # x_0 holds no sentinel: the schedule rules them out exactly
        assert set(y.tolist()) <= {0, 1}
        assert len(y) == 3  # the INS goes, the DEL becomes a value, no DEL counts at t = 1


def test_monte_carlo_elbo_agrees_with_per_step_training_estimate():
    model = _model(K=3, max_length=8, T=6, insert=1.0, replace=0.1)
    x0 = padded([np.array([0, 1, 2]), np.array([2, 2])], 8)
    g = torch.Generator().manual_seed(0)
    full = torch.stack([elbo(model, x0, generator=g) for _ in range(200)])  # [200, 2] nats
    objective = InsDelObjective()
    per_step = []
    for _ in range(200):
        draws = objective.draw(model.process, x0, g)
        with torch.no_grad():
            per_step.append(float(objective(model, x0, draws)))
    bits = (full / math.log(2) / torch.tensor([4.0, 3.0])).mean(1)  # the objective's unit
    a, b = bits.mean().item(), np.mean(per_step)
    se = math.sqrt(bits.var().item() / 200 + np.var(per_step) / 200)
    assert abs(a - b) < 4 * se


# ---- training on arithmetic progressions -----------------------------------------------------


def _valid_fraction(model, tokenizer, n, g) -> tuple[float, set[int]]:
    """The fraction of n samples that are progressions (0 when sampling fails: an untrained
    model's deletion counts make samples longer than the maximum), and their lengths."""
    try:
        samples = model.sample(n, generator=g, progress=False).sequences
    except LengthError:
        return 0.0, set()
    texts = [tokenizer.decode(torch.as_tensor(s)) for s in samples]
    return np.mean([is_progression(s) for s in texts]), {len(s) for s in samples}


def test_training_on_arithmetic_progressions_beats_untrained_and_chance():
    """2000 steps of a small transformer (2 blocks of width 64, T = 12) on the 12
    progressions a, a + d, a + 2d with a in 0..3, d in 1..3: the fraction of 128 samples that
    are valid progressions exceeds the untrained model's and chance's by 3 standard errors,
    and the samples have several lengths."""
    from rediff.data.text import Tokenizer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tokenizer = Tokenizer.fit(ARITHMETIC_CHARACTERS)
    texts = arithmetic(2000, generator=g, terms=(3, 3), start=(0, 3), step=(1, 3), length=16)
    x = padded([tokenizer.encode(s).numpy() for s in texts], 16)
    model = _model(K=tokenizer.size, max_length=32, T=12, width=64, depth=2, insert=0.0)
    n = 128
    untrained, _ = _valid_fraction(model, tokenizer, n, torch.Generator().manual_seed(1))
    objective = InsDelObjective()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(2000):
        batch = x[torch.randint(len(x), (64,), generator=g)]
        loss = objective(model, batch, objective.draw(model.process, batch, g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained, lengths = _valid_fraction(model, tokenizer, n, torch.Generator().manual_seed(1))
    # chance: uniform tokens with the data's lengths are almost never progressions
    rng = np.random.default_rng(0)
    random = [
        tokenizer.decode(torch.as_tensor(rng.integers(tokenizer.size, size=len(s)))) for s in texts
    ]
    chance = np.mean([is_progression(s) for s in random])
    se = math.sqrt(trained * (1 - trained) / n)
    assert trained > max(untrained, chance) + 3 * se, (trained, untrained, chance)
    assert len(lengths) >= 3  # samples of several lengths


# ---- data and bad input ----------------------------------------------------------------------


def test_arithmetic_data_are_progressions_of_varying_length():
    texts = arithmetic(300, generator=torch.Generator().manual_seed(0), length=20)
    assert all(is_progression(s) and len(s) <= 20 for s in texts)
    assert len({len(s) for s in texts}) > 5
    assert (
        not is_progression("3,5,8") and not is_progression("1,01,1") and not is_progression("4,4,4")
    )


def test_text_lines_leave_out_long_lines():
    kept, dropped = lines("ab\n\n  cde \nfghijk\n", 4)
    assert kept == ["ab", "cde"] and dropped == 1


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="p_delete"):
        InsDelProcess(2, (0.1, 0, 0, 0), (0.7, 0.2, 1.0, 1.0), (0.5, 0, 0, 0))
    with pytest.raises(ValueError, match="p_insert"):
        InsDelProcess(2, (1.0, 0, 0, 0), (0.1, 0.2, 1.0, 1.0), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="empty the sequence"):
        InsDelProcess(2, (0.1, 0.1, 0, 0), (0.1, 0.2, 0.5, 1.0), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="insert"):
        InsDelProcess.make(2, T=8, insert=-1.0)


def test_bad_sequences_are_refused():
    model = _model(K=3, max_length=4)
    with pytest.raises(ValueError, match="maximum length 4"):
        model.check_data(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        model.check_data(torch.tensor([[0, 3, -1]]))
    with pytest.raises(ValueError, match="pads the end"):
        model.check_data(torch.tensor([[0, -1, 1]]))
    with pytest.raises(ValueError, match="integer"):
        model.check_data(torch.zeros(2, 3))
    assert [s.tolist() for s in sequences(torch.tensor([[1, 2, -1], [0, -1, -1]]))] == [[1, 2], [0]]


def test_samples_beyond_the_maximum_length_are_an_error():
    model = _model(K=2, max_length=1, T=5)
    with torch.no_grad():  # make the untrained net predict many deletions at the empty sequence
        model.net.out.bias[2 + 1 :].zero_()
        model.net.out.bias[-1] = 50.0  # the tail of the count head
    with pytest.raises(LengthError, match="beyond the model's maximum length 1"):
        model.sample(4, generator=torch.Generator().manual_seed(0), progress=False)
    out = model.sample(4, overflow="drop", progress=False)
    assert out.sequences == [] and out.kept == () and out.dropped == 4


def test_geometric_entropy_closed_form():
    p = 0.3
    k = np.arange(200)
    probs = (1 - p) * p**k
    assert geometric_entropy(p) == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-12)
