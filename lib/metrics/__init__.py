"""Evaluation metrics for Atelier (issue 3). One idea per module:

- :mod:`.inception`: the offline FID Inception network (weights conversion, cache, features);
- :mod:`.image_quality`: FID / KID / precision-recall with cached reference statistics, and IS;
- :mod:`.domain`: the same formulas on any feature extractor, classifier score, attribute accuracy;
- :mod:`.reconstruction`: PSNR, SSIM, codebook usage;
- :mod:`.retrieval`: Recall@K, FashionGen random-100, Fashion-IQ;
- :mod:`.captions`: BLEU-4, METEOR, ROUGE-L, CIDEr via pycocoevalcap.

Importing this package is cheap: torch-fidelity, torchmetrics, scipy and pycocoevalcap are imported
inside the functions that need them.
"""

from lib.metrics.captions import JavaNotFoundError, caption_scores, ptb_tokenize
from lib.metrics.domain import (
    attribute_accuracy,
    classifier_score,
    classifier_score_splits,
    features_from,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kid,
    precision_recall,
)
from lib.metrics.image_quality import (
    ReferenceStats,
    fid_kid,
    fid_kid_from_features,
    inception_score,
    load_reference_stats,
    reference_stats,
)
from lib.metrics.inception import (
    FEATURE_NETWORK,
    InceptionScoreUnavailableError,
    full_inception_weights_path,
    inception_features,
    inception_weights_path,
    inception_weights_sha256,
)
from lib.metrics.reconstruction import codebook_stats, psnr, ssim
from lib.metrics.retrieval import (
    fashioniq_recall,
    fashioniq_summary,
    recall_at_k,
    recall_random100_same_category,
    sample_same_category_negatives,
)

__all__ = [
    "FEATURE_NETWORK",
    "InceptionScoreUnavailableError",
    "JavaNotFoundError",
    "ReferenceStats",
    "attribute_accuracy",
    "caption_scores",
    "classifier_score",
    "classifier_score_splits",
    "codebook_stats",
    "fashioniq_recall",
    "fashioniq_summary",
    "features_from",
    "fid_kid",
    "fid_kid_from_features",
    "frechet_distance",
    "frechet_distance_from_stats",
    "full_inception_weights_path",
    "gaussian_stats",
    "inception_features",
    "inception_score",
    "inception_weights_path",
    "inception_weights_sha256",
    "kid",
    "load_reference_stats",
    "precision_recall",
    "psnr",
    "ptb_tokenize",
    "recall_at_k",
    "recall_random100_same_category",
    "sample_same_category_negatives",
    "ssim",
]
