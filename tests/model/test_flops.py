import keras
import pytest

from bert4rec.model.flops import encoder_flops
from bert4rec.model.network import build_model
from bert4rec.params import ModelParams, TrainValParams


@pytest.mark.parametrize("block", ["transformer", "ligr"])
def test_encoder_flops_count_every_kernel_of_the_blocks_once_per_token(block):
    """The count follows the model: 2 FLOPs per kernel weight per token, plus the attention's
    scores and context (2 x 2 x width^2 x hidden per sequence)."""
    model_params = ModelParams(hidden_size=16, num_attention_heads=2, intermediate_size=24,
                               max_position_embeddings=10, block=block)
    keras.utils.set_random_seed(0)
    model = build_model(40, model_params)
    kernels = sum(int(v.numpy().size) for b in model.blocks for v in b.weights if v.path.endswith("kernel"))
    batch, width, hidden = 3, 10, 16
    expected = 2 * batch * width * kernels + 2 * 2 * batch * width * width * hidden * len(model.blocks)
    assert encoder_flops(TrainValParams(model=model_params), batch, width) == expected
