"""Encoders: one module per provider behind :class:`~search_adaptor.encoders.base.Encoder`.

The provider names are plain data here, so the command line lists them without importing numpy.
"""

LOCAL = "sentence-transformers"
#: static token-embedding models (a folder made by ``search-adaptor distill``, or any model2vec folder)
MODEL2VEC = "model2vec"
#: a sentence-transformers model exported to ONNX, int8 by default (``search-adaptor export-encoder``)
ONNX = "onnx"
#: provider name -> (module, class, the command that makes its folder) of the models held in a folder
FOLDER_CLASSES: dict[str, tuple[str, str, str]] = {
    MODEL2VEC: ("search_adaptor.encoders.model2vec", "Model2VecEncoder", "search-adaptor distill --out DIR"),
    ONNX: ("search_adaptor.encoders.onnx", "OnnxEncoder", "search-adaptor export-encoder --out DIR"),
}
#: provider name -> (module, class) of its encoder
API_CLASSES: dict[str, tuple[str, str]] = {
    "openai": ("search_adaptor.encoders.openai", "OpenAIEncoder"),
    "azure-openai": ("search_adaptor.encoders.openai", "AzureOpenAIEncoder"),
    "openai-compatible": ("search_adaptor.encoders.openai", "OpenAICompatibleEncoder"),
    "gemini": ("search_adaptor.encoders.gemini", "GeminiEncoder"),
    "vertex": ("search_adaptor.encoders.gemini", "VertexEncoder"),
    "cohere": ("search_adaptor.encoders.cohere", "CohereEncoder"),
    "voyage": ("search_adaptor.encoders.voyage", "VoyageEncoder"),
}
PROVIDERS: tuple[str, ...] = (LOCAL, *FOLDER_CLASSES, *API_CLASSES)
#: provider -> a model of it that embeds images as well as texts (corpus rows with ``"image"``)
IMAGE_MODELS: dict[str, str] = {
    "cohere": "embed-v4.0",
    "voyage": "voyage-multimodal-3",
    "vertex": "multimodalembedding@001",
}
#: the providers among :data:`IMAGE_MODELS` that also take image URLs (they fetch the image)
IMAGE_URL_PROVIDERS: tuple[str, ...] = ("voyage",)
