"""The data pipeline: corpus -> documents -> train/val split -> tokenizer -> uint16 shards -> batches.

Typical use:
    info = default_dataset()                       # built-in KJV + Shakespeare, prepared once, cached
    loader = TokenLoader(info.train, batch_size=8, seq_len=256, seed=0)
    x, y = next(loader)
    for x, y in val_batches(info.val, batch_size=8, seq_len=256, max_batches=20): ...
"""

from nvfp4.data.corpus import (
    CorpusError,
    Document,
    builtin_corpus,
    clean_play_markdown,
    corpus_hash,
    read_user_documents,
    split_documents,
)
from nvfp4.data.loader import TokenLoader, val_batches
from nvfp4.data.shards import (
    DEFAULT_VAL_FRACTION,
    DatasetInfo,
    ShardError,
    ShardHeader,
    ShardSpan,
    ShardWriter,
    TokenStream,
    default_dataset,
    load_dataset,
    prepare_dataset,
    read_shard,
    read_shard_header,
    split_tail,
    write_shard,
)
from nvfp4.data.tokenizer import (
    EOT_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
    resolve_cache_dir,
    train_or_load_bpe,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CorpusError",
    "DEFAULT_VAL_FRACTION",
    "DatasetInfo",
    "Document",
    "EOT_TOKEN",
    "ShardError",
    "ShardHeader",
    "ShardSpan",
    "ShardWriter",
    "TokenLoader",
    "TokenStream",
    "Tokenizer",
    "builtin_corpus",
    "clean_play_markdown",
    "corpus_hash",
    "default_dataset",
    "load_dataset",
    "load_tokenizer",
    "prepare_dataset",
    "read_shard",
    "read_shard_header",
    "read_user_documents",
    "resolve_cache_dir",
    "split_documents",
    "split_tail",
    "train_or_load_bpe",
    "val_batches",
    "write_shard",
]
