"""FineHARD curation: VLM captions, spaCy expressions, open-vocabulary grounding, LLM hard negatives."""
from .expressions import Expression, SpacyExpressionParser, extract_expressions
from .generation import LLMNegativeWriter, VLMCaptioner, clean_expression, parse_negatives, short_caption
from .grounding import Detection, PipelineGrounder, select_regions
from .pipeline import CurationStats, curate, curate_image, find_images

__all__ = [
    "CurationStats",
    "Detection",
    "Expression",
    "LLMNegativeWriter",
    "PipelineGrounder",
    "SpacyExpressionParser",
    "VLMCaptioner",
    "clean_expression",
    "curate",
    "curate_image",
    "extract_expressions",
    "find_images",
    "parse_negatives",
    "select_regions",
    "short_caption",
]
