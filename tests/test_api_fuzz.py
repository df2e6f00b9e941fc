"""The API's OpenAPI document, and the API fuzzed against it: no input makes any route answer 5xx.

The fuzz runs against the API as a real process on Redis (so the schedule routes work rather than
answering 503) with local-disk storage holding a small LFW dataset. It sends requests over loopback
instead of calling the WSGI app in this process because the API's settings, storage and Celery app are
per-process singletons configured at import, which another test module may already have made.
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from api import create_app
from api.openapi import REF
from pipeline.storage import LocalStorage
from tests.api_process import running_api
from tests.system import API_KEY
from workers.schemas import EnrollRequest, RecognitionRequest, ScheduleRequest, TrainingRequest

EXAMPLES_PER_ROUTE = 40  # per route and mode: with about 20 routes, under a minute on 2 busy cores


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule)


def test_the_openapi_document_validates_and_holds_every_route_of_the_app():
    app = create_app(api_keys=[])
    response = app.test_client().get("/v1/openapi.json")  # no key needed
    assert response.status_code == 200
    document = response.json
    validate(document)
    assert document["openapi"].startswith("3.")

    routes = {(method.lower(), _openapi_path(rule.rule)) for rule in app.url_map.iter_rules()
              if rule.endpoint != "static" for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert len(routes) >= 18 and routes == documented

    # Request bodies are the very schemas that validate them.
    schemas = document["components"]["schemas"]
    for path, model in [("/v1/jobs/training", TrainingRequest), ("/v1/jobs/recognition", RecognitionRequest),
                        ("/v1/jobs/enroll", EnrollRequest), ("/v1/schedules", ScheduleRequest)]:
        body = document["paths"][path]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {"$ref": REF.format(model=model.__name__)}
        expected = model.model_json_schema(ref_template=REF)
        for name, nested in expected.pop("$defs", {}).items():  # a nested model is a component of its own
            assert schemas[name] == nested
        assert schemas[model.__name__] == expected

    listing = {p["name"]: p for p in document["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert set(listing) == {"type", "state", "limit", "offset"} and all(p["in"] == "query" for p in listing.values())
    job = document["paths"]["/v1/jobs/{job_id}"]["get"]
    assert job["parameters"][0] | {"schema": None} == {"name": "job_id", "in": "path", "required": True,
                                                      "schema": None}

    # One security scheme, the header; the scope each operation needs; health needs nothing.
    assert document["components"]["securitySchemes"] == {"ApiKey": {
        **document["components"]["securitySchemes"]["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}}
    assert document["security"] == [{"ApiKey": []}]
    assert document["paths"]["/v1/health"]["get"]["security"] == []
    assert document["paths"]["/v1/jobs/training"]["post"]["x-required-scope"] == "submit"
    assert document["paths"]["/v1/models/{name}/promote"]["post"]["x-required-scope"] == "admin"
    assert document["paths"]["/v1/schedules"]["get"]["x-required-scope"] == "admin"
    assert document["paths"]["/v1/jobs"]["get"]["x-required-scope"] == "read"

    # Every error has the same form.
    assert schemas["Error"]["required"] == ["error"]
    for operations in document["paths"].values():
        for operation in operations.values():
            error = operation["responses"]["default"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory, redis_url, lfw_dir):
    with running_api(tmp_path_factory.mktemp("fuzz"), redis_url) as api:
        storage = LocalStorage(api["data_dir"] / "storage")
        for person in ("Colin_Powell", "Tony_Blair"):
            for path in sorted((lfw_dir / person).glob("*.jpg"))[:2]:
                storage.put(f"datasets/lfw20/{person}/{path.name}", path.read_bytes())  # the document's example
        yield api


def test_no_request_makes_any_route_answer_5xx(fuzzed_api):
    """Valid and invalid requests (schemathesis' positive and negative modes) and 5,000-character ids, a
    bounded number of each per route, always with a valid key (a wrong key stops at 401, which the
    security tests cover); every route's 5xx answers are reported together."""
    config = SchemathesisConfig.from_dict({"generation": {"with-security-parameters": False}})
    schema = schemathesis.openapi.from_url(f"{fuzzed_api['base']}/v1/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    server_errors: dict[str, str] = {}
    for operation in operations:
        strategies = {mode.value: operation.as_strategy(generation_mode=mode) for mode in GenerationMode}
        ids = re.findall(r"{(\w+)}", operation.path)
        if ids:
            strategies["long ids"] = operation.as_strategy(path_parameters={name: "a" * 5000 for name in ids})
        for what, strategy in strategies.items():
            @given(case=strategy)
            @settings(max_examples=EXAMPLES_PER_ROUTE if what != "long ids" else 3, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def call(case):
                response = case.call(base_url=fuzzed_api["base"], headers={"X-API-Key": API_KEY}, timeout=30)
                assert response.status_code < 500, (
                    f"{response.status_code}: {response.text[:300]}\n"
                    f"{case.as_curl_command(headers={'X-API-Key': '...'})[:500]}")

            try:
                call()
            except Unsatisfiable:
                assert what == "negative", operation.label  # only a route without any input has nothing to negate
            except AssertionError as err:
                server_errors[f"{operation.label} ({what})"] = str(err)
    assert not server_errors, "\n\n".join(f"{what}: {error}" for what, error in server_errors.items())
