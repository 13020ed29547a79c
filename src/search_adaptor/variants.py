"""The catalogue of adapter variants and the families ``fit`` trains, as plain data (no torch).

A variant is a name and the :class:`~search_adaptor.model.SearchAdaptor` parameters it sets; a
family is the list of variants ``fit --family NAME`` trains and selects among on validation. The
command line reads its choices and defaults here, so ``--help`` imports neither torch nor numpy.
"""

from __future__ import annotations

from typing import Any

#: Defaults of the fit protocol that the command line shows and the library uses.
DEFAULT_FAMILY = "auto"
DEFAULT_FOLDS = 5
MAX_STEPS = 2000
#: The largest seed: torch's ``Generator.manual_seed`` takes an unsigned 64-bit integer (numpy's
#: ``default_rng`` any integer >= 0), so a seed is an integer from 0 to this.
MAX_SEED = 2**64 - 1
VAL_FRACTION = 0.2
#: On which queries ``fit`` compares its candidates: each candidate's validation split, or k-fold
#: cross-validation over every labelled query (``experiment.select``).
SELECTIONS = ("validation", "kfold")
DEFAULT_SELECTION = "validation"
#: Families whose winner ``fit`` trains again on every labelled query before shipping it, unless told
#: not to (``--no-refit-all``; ``experiment.run_fit``). Over 5 seeds of every shared dataset, `auto`
#: refitted gained on all 8 (SciFact +0.029 nDCG@10, significant on 6), while the paper's recipe lost on
#: MetaTool (-0.005, p 1e-4): BENCHMARKS.md, the suite's refit table.
REFIT_BY_DEFAULT = ("auto",)
#: ``precision`` choices, and what "auto" resolves to (what a fitted adapter records).
PRECISIONS = ("float32", "bfloat16", "auto")
TRAINED_PRECISIONS = ("float32", "bfloat16")

#: The paper's grid: alpha from {0, 0.1, 1}, beta from {0, 0.01, 0.1}, picked on validation.
PAPER_GRID = [(a, b) for a in (0.0, 0.1, 1.0) for b in (0.0, 0.01, 0.1)]
#: A finer log grid of alpha at the paper's default beta. The alpha that works depends on the pairs
#: per query (the ranking loss sums over them): about 0.1 at SciFact's ~15 pairs per query.
ALPHA_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)


def _paper(alpha: float, beta: float) -> dict[str, Any]:
    return {
        "mode": "shared",
        "loss": "ranking",
        "pair_reduction": "sum",
        "negatives": "random",
        "alpha": alpha,
        "beta": beta,
    }


def _infonce(mode: str, architecture: str = "mlp") -> dict[str, Any]:
    # The recovery term is alpha * (rec_q + rec_d): a shared adapter has both terms, a query-only
    # one only rec_q, so alpha 0.05 (shared) and 0.1 (query-only) put the same weight on each vector.
    return {
        "architecture": architecture,
        "mode": mode,
        "loss": "infonce",
        "in_batch": True,
        "negatives": "hard",
        "alpha": 0.05 if mode == "shared" else 0.1,
        "beta": 0.0,
    }


#: Named variants: {family: [(variant name, SearchAdaptor parameters), ...]}.
FAMILIES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "paper": [(f"paper(alpha={a:g},beta={b:g})", _paper(a, b)) for a, b in PAPER_GRID],
    "paper-default": [("paper(alpha=0.1,beta=0.01)", _paper(0.1, 0.01))],
    "paper-alpha": [(f"paper(alpha={a:g},beta=0.01)", _paper(a, 0.01)) for a in ALPHA_GRID],
    "query-only": [("query-only-infonce", _infonce("query_only"))],
    "query-only-ranking": [("query-only-ranking", {**_paper(0.1, 0.01), "mode": "query_only"})],
    "linear": [("linear-query-only-infonce", _infonce("query_only", "linear"))],
    "shared-infonce": [("shared-infonce", _infonce("shared"))],
    # Plain contrastive variants: random negatives, no recovery term. The linear one is what
    # LlamaIndex ships (in-batch InfoNCE at temperature 0.05, one random document per positive).
    # They win where hard negatives mislead (incomplete qrels) or the recovery term holds a weak
    # base space too close to where it started (XQuAD-R de, es, ru in BENCHMARKS.md).
    "linear-random": [
        (
            "linear-query-only-random",
            {
                "architecture": "linear",
                "mode": "query_only",
                "loss": "infonce",
                "in_batch": True,
                "full_corpus_max": 0,
                "negatives": "random",
                "n_negatives": 1,
                "alpha": 0.0,
                "beta": 0.0,
            },
        )
    ],
    "shared-random": [
        (
            "shared-infonce-random",
            {
                "mode": "shared",
                "loss": "infonce",
                "in_batch": True,
                "negatives": "random",
                "alpha": 0.0,
                "beta": 0.0,
            },
        )
    ],
}
# Matryoshka (Yoon et al., EMNLP 2024): every prefix of the adapted vector is a good embedding. The map
# starts as the corpus's PCA rotation (its prefixes are the PCA baseline; the full width is exactly
# zero-shot) and is trained on the prefix sizes given by ``dims`` (``fit --dims``), each loss summed.
FAMILIES["matryoshka"] = [
    (
        "matryoshka",
        {
            "mode": "shared",
            "init": "pca",
            "loss": "infonce",
            "in_batch": True,
            "negatives": "all",
            "alpha": 0.05,  # on SciFact's validation split: 0.798 mean over 48/96/192/384 against 0.761 at 0
            "beta": 0.0,
        },
    )
]
# Without labels (``fit --unsupervised``): the PCA rotation, turned so that each prefix ranks the
# documents as the full base embedding does (the full width keeps every cosine). Starting on the query
# texts' score axes instead (init "score-axes") wins at 48-d on SciFact and XQuAD-R de but loses on
# XQuAD-R en: BENCHMARKS.md.
FAMILIES["matryoshka-unsupervised"] = [
    (
        "matryoshka-unsupervised",
        {"mode": "shared", "init": "pca", "loss": "similarity", "alpha": 0.0, "beta": 0.0, "batch_size": 256},
    )
]
# Cross-model (queries of another model, say a static one, mapped into the documents' space): each
# query tower starts at the least-squares map of paired texts (the corpus texts embedded by both).
_CROSS = {"mode": "query_only", "init": "lstsq", "loss": "infonce", "in_batch": True, "beta": 0.0}
FAMILIES["cross"] = [
    ("cross-linear", {**_CROSS, "architecture": "linear", "negatives": "random", "alpha": 0.0}),
    ("cross-mlp", {**_CROSS, "negatives": "hard", "alpha": 0.1, "gamma": 0.1}),
    ("cross-separate", {**_CROSS, "mode": "separate", "negatives": "hard", "alpha": 0.05, "gamma": 0.1}),
]
# Without labels (upgrade without re-indexing): the map is trained on the paired texts alone.
FAMILIES["cross-unlabelled"] = [("cross-unlabelled", {**_CROSS, "loss": "alignment", "alpha": 0.0})]
# Matryoshka prefixes of a cross-model adapter (``fit --dims`` with a query model): the documents need
# their own tower, started at the corpus's PCA rotation, and the query map starts at the pairs' map
# rotated the same way; the prefixes are trained with labels.
FAMILIES["cross-matryoshka"] = [
    ("cross-matryoshka", {**_CROSS, "mode": "separate", "negatives": "hard", "alpha": 0.05, "gamma": 0.1})
]
#: Families that train Matryoshka prefixes and need ``dims``.
MATRYOSHKA = ("matryoshka", "matryoshka-unsupervised", "cross-matryoshka")
#: What ``family="auto"`` trains, simplest first (ties go to the earlier one). The paper's own
#: recipe is not in it: see BENCHMARKS.md for its validation score against its training time.
AUTO = ("linear-random", "query-only", "linear", "shared-random", "shared-infonce")
#: Every ``--family`` choice.
FAMILY_CHOICES = ("auto", *FAMILIES)


def family_variants(family: str) -> list[tuple[str, dict[str, Any]]]:
    """Variants a family trains; ``"auto"`` is the union of :data:`AUTO`."""
    if family == "auto":
        return [v for fam in AUTO for v in FAMILIES[fam]]
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose auto or one of {', '.join(FAMILIES)}")
    return FAMILIES[family]
