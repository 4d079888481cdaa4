import json


def test_digits_bundle_fixture_has_manifest_and_model(digits_bundle):
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "int8"
    assert (digits_bundle / "model.tflite").read_bytes()[4:8] == b"TFL3"
    assert (digits_bundle.parent / (digits_bundle.name + ".tar.gz")).is_file()
