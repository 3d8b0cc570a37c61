"""fusedrnn.convert() and state_dict round trips between torch.nn and fusedrnn."""

from __future__ import annotations

import copy

import torch
from torch import nn

import fusedrnn


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.encoder = nn.LSTM(8, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.blocks = nn.Sequential(nn.GRU(24, 10, batch_first=True), nn.Identity())
        self.decoder = nn.ModuleDict({"rnn": nn.RNN(10, 6, nonlinearity="relu", batch_first=True)})
        self.head = nn.Linear(6, 20)

    def forward(self, tokens):
        x = self.encoder(self.embed(tokens))[0]
        x = self.blocks[0](x)[0]
        x = self.decoder["rnn"](x)[0]
        return self.head(x)


def test_convert_replaces_every_rnn_and_keeps_weights():
    torch.manual_seed(0)
    model = Seq2Seq().double()
    model.blocks[0].eval()
    tokens = torch.randint(0, 20, (3, 7))
    expected = model(tokens)
    state = copy.deepcopy(model.state_dict())

    converted = fusedrnn.convert(model, backend="reference")
    assert converted is model
    assert type(model.encoder) is fusedrnn.LSTM
    assert type(model.blocks[0]) is fusedrnn.GRU
    assert type(model.decoder["rnn"]) is fusedrnn.RNN
    assert model.decoder["rnn"].nonlinearity == "relu"
    assert not model.blocks[0].training and model.encoder.training
    assert model.encoder.backend == "reference"
    assert model.encoder.weight_ih_l0.dtype == torch.float64
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert (model(tokens) - expected).abs().max() <= 1e-12


def test_convert_a_bare_module_and_apply_options():
    lstm = nn.LSTM(4, 5, proj_size=3)
    fused = fusedrnn.convert(lstm, zoneout_cell=0.1, recurrent_dropout=0.2)
    assert type(fused) is fusedrnn.LSTM and fused.proj_size == 3
    assert fused.zoneout_cell == 0.1 and fused.recurrent_dropout == 0.2
    for name, tensor in lstm.state_dict().items():
        assert torch.equal(tensor, fused.state_dict()[name])


def test_state_dict_round_trip_both_ways():
    torch.manual_seed(1)
    ours = fusedrnn.GRU(3, 4, 2, bidirectional=True)
    theirs = nn.GRU(3, 4, 2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    back = fusedrnn.GRU(3, 4, 2, bidirectional=True)
    back.load_state_dict(theirs.state_dict())
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor)


def test_norm_tensors_are_extra_state_dict_entries():
    ours = fusedrnn.LSTM(3, 4, recurrent_batch_norm=True, max_steps=5, bidirectional=True)
    names = set(ours.state_dict())
    torch_names = set(nn.LSTM(3, 4, bidirectional=True).state_dict())
    assert torch_names < names
    extra = names - torch_names
    assert "bn_running_mean_hh_l0_reverse" in extra and "bn_weight_c_l0" in extra
    assert ours.bn_running_var_ih_l0.shape == (5, 16)
    assert torch.all(ours.bn_weight_hh_l0 == 0.1)  # Cooijmans et al.'s gamma init
    layer_norm = fusedrnn.GRU(3, 4, layer_norm=True)
    assert {n for n, _ in layer_norm.named_parameters()} >= {"ln_weight_ih_l0", "ln_weight_hh_l0"}
    assert torch.all(layer_norm.ln_weight_ih_l0 == 1.0)


def test_convert_applies_forget_bias_to_the_loaded_bias():
    torch.manual_seed(2)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    fused = fusedrnn.convert(lstm, forget_bias=1.0)
    assert fused.forget_bias == 1.0 and "forget_bias=1.0" in repr(fused)
    for name, tensor in lstm.state_dict().items():
        expected = tensor.clone()
        if name.startswith("bias_ih"):
            expected[4:8] += 1.0  # the forget gate's slice, [H:2H]
        assert torch.equal(fused.state_dict()[name], expected), name
