import json

import pytest

from cxr_edge.runtime.errors import ContractError
from cxr_edge.runtime.model.contract import FORMAT_VERSION, Contract
from cxr_edge.runtime.model.model_file import CONTRACT_KEY, VERSION_KEY

CLASSES = ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia")


def test_metadata_round_trip_keeps_every_field():
    contract = Contract(input_size=(224, 192), class_names=CLASSES, channels=1, mean=(0.5,), std=(0.25,),
                        resampling="cubic", fit="pad")
    metadata = contract.to_metadata()
    assert set(metadata) == {CONTRACT_KEY, VERSION_KEY}
    assert all(isinstance(v, str) for v in metadata.values())
    assert Contract.from_metadata(metadata) == contract
    assert Contract.from_dict(json.loads(json.dumps(contract.to_dict()))) == contract


def test_model_without_contract_is_refused_with_a_reason():
    with pytest.raises(ContractError, match="carries no cxr-edge preprocessing contract"):
        Contract.from_metadata({"producer": "someone"})


def test_newer_format_is_refused():
    metadata = Contract(input_size=(224, 224), class_names=CLASSES).to_metadata()
    metadata[VERSION_KEY] = str(FORMAT_VERSION + 1)
    with pytest.raises(ContractError, match="format version"):
        Contract.from_metadata(metadata)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"input_size": (224,)}, "input_size"),
        ({"input_size": (4, 224)}, "input_size"),
        ({"channels": 2, "mean": (0.5, 0.5), "std": (0.5, 0.5)}, "channels"),
        ({"channels": 1}, "mean and std"),
        ({"std": (0.5, 0.0, 0.5)}, "positive"),
        ({"resampling": "bilinearish"}, "resampling"),
        ({"fit": "crop"}, "fit"),
        ({"class_names": ("a", "a")}, "distinct"),
        ({"class_names": ()}, "distinct"),
    ],
)
def test_invalid_contracts_say_what_is_wrong(changes, message):
    fields = {"input_size": (224, 224), "class_names": CLASSES} | changes
    with pytest.raises(ContractError, match=message):
        Contract(**fields)


def test_unknown_and_missing_fields_are_errors():
    data = Contract(input_size=(224, 224), class_names=CLASSES).to_dict()
    with pytest.raises(ContractError, match="unknown fields: colour"):
        Contract.from_dict(data | {"colour": "blue"})
    del data["class_names"]
    with pytest.raises(ContractError, match="lacks required fields: class_names"):
        Contract.from_dict(data)
    with pytest.raises(ContractError, match="not valid JSON"):
        Contract.from_metadata({CONTRACT_KEY: "{not json", VERSION_KEY: str(FORMAT_VERSION)})
