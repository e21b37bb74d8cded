"""Caption metrics through pycocoevalcap (the COCO caption evaluation code).

UniFashion Table 2 (and FashionViL, FAME-ViL before it) report BLEU-4 (Papineni et al., 2002),
METEOR (Banerjee & Lavie, 2005; METEOR 1.5 jar), ROUGE-L (Lin, 2004) and CIDEr (Vedantam et al.,
2015; coco-caption's CIDEr-D variant with length penalty sigma=6), all computed after the Stanford
PTB tokenizer lower-cases the text and strips punctuation. Scores are returned in [0, 1]
(CIDEr in [0, 10]); papers print them x100.

Java is needed by the tokenizer and by METEOR. The tokenizer is called here with the same jar,
arguments and punctuation list as ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``, but with
its temporary file in the system temp folder: the original writes into its own package folder,
which fails in a read-only environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from lib.io import AtelierInputError

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


class JavaNotFoundError(RuntimeError):
    """pycocoevalcap's tokenizer and METEOR run Java programs; no ``java`` is on PATH."""


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "caption metrics need Java: pycocoevalcap's PTB tokenizer (Stanford CoreNLP 3.4.1) and METEOR 1.5 "
            "are Java programs, and no 'java' is on PATH. Install a JRE (e.g. apt-get install default-jre-headless)."
        )
    return java


def implementation() -> str:
    try:
        version = metadata.version("pycocoevalcap")
    except metadata.PackageNotFoundError:
        version = "not installed"
    return f"pycocoevalcap {version} (PTB tokenizer: Stanford CoreNLP 3.4.1; METEOR 1.5; CIDEr-D)"


def ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """PTB-tokenise ``{id: [captions]}`` exactly as pycocoevalcap's ``PTBTokenizer`` does."""
    java = _require_java()
    jar_dir = Path(ptbtokenizer.__file__).resolve().parent
    ids = [key for key, caps in captions.items() for _ in caps]
    sentences = "\n".join(c.replace("\n", " ") for caps in captions.values() for c in caps)
    fd, tmp = tempfile.mkstemp(prefix="atelier-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(sentences.encode())
        cmd = [java, "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", tmp]
        proc = subprocess.run(cmd, cwd=jar_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    lines = proc.stdout.decode().split("\n")
    out: dict[Any, list[str]] = {}
    for key, line in zip(ids, lines):
        tokens = [w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS]
        out.setdefault(key, []).append(" ".join(tokens))
    return out


def caption_scores(references: Mapping[Any, Sequence[str]], candidates: Mapping[Any, Sequence[str] | str],
                   metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """Corpus-level caption scores of ``candidates`` against ``references``.

    ``references``: ``{id: [reference captions]}`` (>= 1 each); ``candidates``: ``{id: [one
    caption]}`` (a bare string is accepted), same ids. ``metrics``: any of ``"BLEU-4"`` (BLEU-1..3
    are reported alongside), ``"METEOR"``, ``"ROUGE-L"``, ``"CIDEr"``. Returns ``{metric: score,
    ..., "implementation", "num_samples"}``. CIDEr's idf comes from the references of the whole
    evaluated set, so it is only meaningful on a corpus (one image gives 0).
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise AtelierInputError(f"caption_scores: unknown metrics {sorted(unknown)}; choose from {METRICS}")
    if set(references) != set(candidates):
        raise AtelierInputError(f"caption_scores: ids differ between references and candidates "
                                f"({len(set(references) ^ set(candidates))} unmatched)")
    if not references:
        raise AtelierInputError("caption_scores: no captions given")
    cands = {k: [v] if isinstance(v, str) else list(v) for k, v in candidates.items()}
    for key, caps in cands.items():
        if len(caps) != 1:
            raise AtelierInputError(f"caption_scores: id {key!r} has {len(caps)} candidate captions, expected 1")
        if not references[key]:
            raise AtelierInputError(f"caption_scores: id {key!r} has no reference caption")
    gts = ptb_tokenize({k: list(v) for k, v in references.items()})
    res = ptb_tokenize(cands)
    out: dict[str, Any] = {}
    if "BLEU-4" in metrics:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)})
    if "METEOR" in metrics:
        scorer = Meteor()
        try:
            out["METEOR"] = float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer  # its __del__ stops the Java subprocess now rather than at exit
    if "ROUGE-L" in metrics:
        out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in metrics:
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    out.update(implementation=implementation(), num_samples=len(cands))
    return out
