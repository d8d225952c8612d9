"""Data layer (SPEC §4): corpus reading, tokenizer, Grain pipeline, passkey samples."""

from gca_jax.data.corpus import CorpusError, CorpusStats, list_corpus_files, read_documents
from gca_jax.data.passkey import (
    PasskeyConfig,
    PasskeyInfo,
    PasskeySample,
    answer_start,
    insert_passkey,
    make_landmark_passkey_sample,
    make_passkey_sample,
)
from gca_jax.data.pipeline import (
    TokenStream,
    make_eval_windows,
    make_train_dataset,
    num_windows,
    tokenize_corpus,
)
from gca_jax.data.tokenizer import EOT_PIECE, Tokenizer, train_tokenizer, training_sentences

__all__ = [
    "CorpusError", "CorpusStats", "EOT_PIECE", "PasskeyConfig", "PasskeyInfo", "PasskeySample",
    "TokenStream", "Tokenizer", "answer_start", "insert_passkey", "list_corpus_files",
    "make_eval_windows", "make_landmark_passkey_sample", "make_passkey_sample",
    "make_train_dataset", "num_windows", "read_documents", "tokenize_corpus", "train_tokenizer",
    "training_sentences",
]
