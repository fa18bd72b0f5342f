"""The round engine, strategies, wire format and centralised baseline."""

import json

import numpy as np
import pytest
import torch

from securefed import (
    ConfigurationError,
    FedAvg,
    FedProx,
    InvalidDataError,
    ModelSpec,
    run_federated,
)
from securefed.cli import main as cli_main
from securefed.federated import (
    ClientArrays,
    DropoutPlan,
    FederatedArrays,
    Float32Codec,
    PlainChannel,
    Upload,
)
from securefed.federated.centralized import run_centralized
from securefed.models import get_flat_params, set_flat_params
from securefed.wire import pack, unpack


def toy_data(n_clients=3, rows=40, d=5, seed=0) -> FederatedArrays:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    clients = []
    for k in range(n_clients):
        X = rng.normal(size=(rows + 7 * k, d)).astype(np.float32)
        y = (X @ w + 0.5 * rng.normal(size=len(X)) > 0).astype(np.float32)
        clients.append(ClientArrays(client_id=k, name=f"h{k}", X=X, y=y))
    Xt = rng.normal(size=(200, d)).astype(np.float32)
    return FederatedArrays(clients=tuple(clients), X_test=Xt, y_test=(Xt @ w > 0).astype(np.float32),
                           feature_names=tuple(f"x{i}" for i in range(d)))


@pytest.fixture(scope="module")
def data():
    return toy_data()


def test_same_seed_same_run_bit_for_bit(data):
    spec = ModelSpec("mlp", n_features=data.num_features)
    a = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=7)
    b = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=7)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    assert [r.test_loss for r in a.history] == [r.test_loss for r in b.history]
    c = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=8)
    assert not np.array_equal(a.final_params, c.final_params)


def test_fedprox_mu_zero_equals_fedavg(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    a = run_federated(data, strategy=FedAvg(), model=spec, rounds=3, seed=1)
    b = run_federated(data, strategy=FedProx(proximal_mu=0.0), model=spec, rounds=3, seed=1)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    c = run_federated(data, strategy=FedProx(proximal_mu=1.0, local_epochs=3), model=spec, rounds=3, seed=1)
    assert not np.array_equal(a.final_params, c.final_params)


def test_fedprox_pulls_toward_global(data):
    """A strong proximal term keeps local models closer to the global one."""
    spec = ModelSpec("logreg", n_features=data.num_features)
    kw = dict(learning_rate=0.5, local_epochs=5, batch_size=8)
    drift = {}
    for mu in (0.0, 1.0):
        res = run_federated(data, strategy=FedProx(proximal_mu=mu, **kw), model=spec, rounds=1, seed=3)
        drift[mu] = np.mean([np.linalg.norm(m.content["update"] / m.content["weight"])
                             for m in res.transcript[0].received])
    assert drift[1.0] < 0.8 * drift[0.0]


def test_one_client_one_step_equals_one_sgd_step():
    one = toy_data(n_clients=1, rows=32)
    spec = ModelSpec("mlp", n_features=one.num_features, hidden=(8,))
    lr = 0.3
    res = run_federated(one, strategy=FedAvg(learning_rate=lr, local_epochs=1, batch_size=None),
                        model=spec, rounds=1, seed=5)
    w0 = res.transcript[0].global_params
    net = spec.build()
    set_flat_params(net, w0)
    X = torch.as_tensor(one.clients[0].X)
    y = torch.as_tensor(one.clients[0].y)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X), y)
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double().numpy()
    np.testing.assert_allclose(res.final_params, w0 - lr * grad, rtol=0, atol=1e-6)


def test_upload_bytes_equal_serialised_message(data):
    spec = ModelSpec("mlp", n_features=data.num_features, hidden=(64,))
    d = spec.num_params()
    res = run_federated(data, strategy=FedAvg(), model=spec, rounds=1, seed=0)
    msgs = res.transcript[0].received
    for m in msgs:
        expected = len(pack({"round": 0, "client": m.sender, "weight": m.content["weight"],
                             "u": m.content["update"].astype(np.float32)}))
        assert m.nbytes == expected
        assert 4 * d <= m.nbytes <= 4 * d + 64
    assert res.history[0].bytes_up == sum(m.nbytes for m in msgs)
    assert res.history[0].bytes_down == 3 * len(pack({"round": 0, "w": np.zeros(d, np.float32)}))


def test_weighted_mean_is_fedavg_aggregate(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_federated(data, strategy=FedAvg(), model=spec, rounds=1, seed=0)
    t = res.transcript[0]
    deltas = [m.content["update"] / m.content["weight"] for m in t.received]
    ns = [c.num_examples for c in data.clients]
    expected = sum(n * u for n, u in zip(ns, deltas, strict=True)) / sum(ns)
    np.testing.assert_allclose(t.revealed_update, expected, atol=1e-6)
    np.testing.assert_allclose(res.final_params, t.global_params + t.revealed_update, atol=1e-12)


def test_dropouts_and_sampling(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_federated(data, strategy=FedAvg(), model=spec, rounds=8, seed=0, dropout_rate=0.4)
    contribs = [r.num_contributors for r in res.history]
    assert min(contribs) < 3 and all(r.num_selected == 3 for r in res.history)
    for t in res.transcript:
        assert {m.sender for m in t.received} == set(t.contributors)
    res2 = run_federated(data, strategy=FedAvg(), model=spec, rounds=4, seed=0, clients_per_round=2)
    assert all(len(t.selected) == 2 for t in res2.transcript)


def test_bad_arguments_are_refused(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    with pytest.raises(ConfigurationError, match="rounds must be >= 1, got 0"):
        run_federated(data, strategy=FedAvg(), model=spec, rounds=0)
    with pytest.raises(ConfigurationError, match="dropout_rate"):
        run_federated(data, strategy=FedAvg(), model=spec, rounds=1, dropout_rate=1.5)
    with pytest.raises(ConfigurationError, match="expects 9 features, data has 5"):
        run_federated(data, strategy=FedAvg(), model=ModelSpec("logreg", n_features=9), rounds=1)
    with pytest.raises(ConfigurationError, match="learning_rate must be > 0"):
        FedAvg(learning_rate=-1)
    with pytest.raises(ConfigurationError, match="proximal_mu must be >= 0"):
        FedProx(proximal_mu=-0.1)
    with pytest.raises(ConfigurationError, match="not a stage"):
        run_federated(data, strategy=FedAvg(), model=spec, rounds=1, dropout_stage="unmask")


def test_plain_channel_rejects_bad_uploads():
    ch = PlainChannel()
    kw = dict(round_index=0, dim=3, codec=Float32Codec(), dropouts=DropoutPlan(),
              rng=np.random.default_rng(0))
    good = Upload(0, np.ones(3), 1.0, {"u": np.ones(3, np.float32)})
    with pytest.raises(InvalidDataError, match="duplicate client id 0"):
        ch.aggregate([good, good], **kw)
    with pytest.raises(InvalidDataError, match=r"shape \(2,\), expected \(3,\)"):
        ch.aggregate([Upload(0, np.ones(2), 1.0, {"u": np.ones(2, np.float32)})], **kw)
    with pytest.raises(InvalidDataError, match="NaN or inf"):
        ch.aggregate([Upload(0, np.array([1, np.nan, 0]), 1.0, {"u": np.ones(3, np.float32)})], **kw)
    with pytest.raises(InvalidDataError, match="weight"):
        ch.aggregate([Upload(0, np.ones(3), -1.0, {"u": np.ones(3, np.float32)})], **kw)


def test_wire_round_trip_and_corruption():
    fields = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": b"xyz", "f": 1.5, "i": -3,
              "s": "hospital", "u": np.array([1, 2], dtype=np.uint32)}
    blob = pack(fields)
    out = unpack(blob)
    np.testing.assert_array_equal(out["a"], fields["a"])
    assert out["b"] == b"xyz" and out["f"] == 1.5 and out["i"] == -3 and out["s"] == "hospital"
    assert out["u"].dtype == np.uint32
    with pytest.raises(InvalidDataError, match="truncated"):
        unpack(blob[:-3])
    with pytest.raises(InvalidDataError, match="not a securefed message"):
        unpack(b"XX" + blob[2:])
    with pytest.raises(InvalidDataError, match="trailing"):
        unpack(blob + b"\0")


def test_flat_params_round_trip():
    spec = ModelSpec("mlp", n_features=4, hidden=(3,))
    net = spec.build(seed=1)
    v = get_flat_params(net)
    assert v.shape == (spec.num_params(),) == (4 * 3 + 3 + 3 + 1,)
    set_flat_params(net, v * 2)
    np.testing.assert_allclose(get_flat_params(net), v * 2, rtol=1e-6)
    with pytest.raises(ConfigurationError, match="expected"):
        set_flat_params(net, v[:-1])


def test_centralized_baseline_learns(data):
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_centralized(data, model=spec, rounds=10, seed=0)
    assert res.final.test_accuracy > 0.85
    assert res.history[0].bytes_up > 4 * sum(c.X.size for c in data.clients)
    assert all(r.bytes_up == 0 for r in res.history[1:])


def test_cli_train_writes_json(tmp_path, capsys):
    assert cli_main(["train", "--algorithm", "fedprox", "--rounds", "2", "--seed", "3",
                     "--out", str(tmp_path), "--quiet"]) == 0
    path = tmp_path / "fedprox-seed3.json"
    assert capsys.readouterr().out.strip().endswith(str(path))
    doc = json.loads(path.read_text())
    assert doc["algorithm"] == "fedprox" and len(doc["history"]) == 2
    assert cli_main(["train", "--rounds", "0", "--out", str(tmp_path), "--quiet"]) == 2


def test_roc_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from securefed.federated.metrics import roc_auc

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, size=50)
        s = np.round(rng.normal(size=50) + y, 1)  # rounding creates ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(4), np.arange(4.0)))


def test_each_hospital_is_evaluated_on_its_own_test_patients():
    """Per-hospital metrics equal a direct computation with the final model (scikit-learn)."""
    from dataclasses import replace

    from sklearn.metrics import accuracy_score, roc_auc_score

    base = toy_data(seed=3)
    rng = np.random.default_rng(5)
    clients = []
    for c in base.clients:
        Xt = rng.normal(size=(30, base.num_features)).astype(np.float32)
        yt = (rng.random(30) < 0.4).astype(np.float32)
        clients.append(replace(c, X_test=Xt, y_test=yt))
    clients[1] = replace(base.clients[1])  # a hospital without a test set is simply absent
    data = replace(base, clients=tuple(clients))
    spec = ModelSpec("logreg", n_features=data.num_features)
    res = run_federated(data, strategy=FedAvg(), model=spec, rounds=2, seed=0)
    per = res.final.per_hospital
    assert set(per) == {"h0", "h2"}
    net = spec.build()
    set_flat_params(net, res.final_params)
    for c in (clients[0], clients[2]):
        with torch.no_grad():
            logits = net(torch.as_tensor(c.X_test)).numpy()
        assert per[c.name]["accuracy"] == pytest.approx(accuracy_score(c.y_test, logits > 0))
        assert per[c.name]["auc"] == pytest.approx(roc_auc_score(c.y_test, logits))
        assert per[c.name]["n"] == 30
    assert res.to_dict()["history"][-1]["per_hospital"]["h2"]["n"] == 30
    with pytest.raises(InvalidDataError, match="give both X_test and y_test"):
        ClientArrays(0, "x", clients[0].X, clients[0].y, X_test=clients[0].X)
