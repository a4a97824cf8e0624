from bert4rec.model.store import ModelInfo


def info(model: dict) -> ModelInfo:
    return ModelInfo.model_validate({"model_name": "m", "num_tokens": 10, "max_seq_length": 8, "model": model,
                                     "vocabulary_sha256": "0" * 64})


def test_a_model_json_from_before_the_block_key_reads_as_transformer_blocks():
    assert info({"hidden_size": 16, "num_attention_heads": 2}).model.block == "transformer"
    assert info({"hidden_size": 16, "num_attention_heads": 2, "block": "ligr"}).model.block == "ligr"
