"""The API's security and robustness: hashed keys with scopes, no secret in logs or records, bounded
JSON, errors that show no server detail, an app that can be built more than once, and a compose file
without default secrets.

Most tests run against the API as a real process on Redis (tests.api_process); a few build the app in
this process, on routes that answer before touching storage.
"""

from __future__ import annotations

import errno
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
import yaml
from werkzeug.exceptions import BadRequest

from api import MAX_JSON_DEPTH, create_app
from api.endpoints import READ, endpoint
from api.keys import config_entry, hash_key, parse_entries
from pipeline.storage import LocalStorage
from tests.api_process import running_api
from tests.system import ADMIN_KEY, API_KEY, READ_KEY, REPO, SUBMIT_KEY

TRAINING = {"model": "scoped", "dataset_prefix": "datasets/scoped"}
WRONG_KEY = "frk_not-a-configured-key-Qz81mVb7xLp3"


@pytest.fixture(scope="module")
def api(tmp_path_factory, redis_url, lfw_dir):
    with running_api(tmp_path_factory.mktemp("api"), redis_url) as running:
        storage = LocalStorage(running["data_dir"] / "storage")
        for person in ("Colin_Powell", "Tony_Blair"):
            for path in sorted((lfw_dir / person).glob("*.jpg"))[:2]:
                storage.put(f"datasets/scoped/{person}/{path.name}", path.read_bytes())
        yield running


def send(api, method: str, path: str, key: str | None, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["X-API-Key"] = key
    return requests.request(method, f"{api['base']}/v1{path}", headers=headers, timeout=30, **kwargs)


# -- keys and scopes ----------------------------------------------------------------------------

def test_a_read_key_reads_but_cannot_submit_promote_or_touch_schedules(api):
    assert send(api, "GET", "/jobs", READ_KEY).status_code == 200
    assert send(api, "GET", "/models", READ_KEY).status_code == 200
    for method, path, body, needed in [
        ("POST", "/jobs/training", TRAINING, "submit"),
        ("POST", "/jobs/0123456789abcdef/cancel", None, "submit"),
        ("POST", "/models/scoped/promote", {"version": "v1"}, "admin"),
        ("POST", "/models/scoped/rollback", None, "admin"),
        ("GET", "/schedules", None, "admin"),
    ]:
        response = send(api, method, path, READ_KEY, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert f"needs scope {needed}" in response.json()["error"]
        assert "has scope read" in response.json()["error"]


def test_a_submit_key_submits_and_cancels_but_only_admin_promotes_rolls_back_and_manages_schedules(api):
    submitted = send(api, "POST", "/jobs/training", SUBMIT_KEY, json=TRAINING)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert send(api, "GET", f"/jobs/{job_id}", SUBMIT_KEY).json()["state"] == "queued"
    assert send(api, "POST", f"/jobs/{job_id}/cancel", SUBMIT_KEY).json()["state"] == "cancelled"

    admin_only = [
        ("POST", "/models/scoped/promote", {"version": "v1"}),
        ("POST", "/models/scoped/rollback", None),
        ("GET", "/schedules", None),
        ("POST", "/schedules", {"model": "scoped", "dataset_prefix": "datasets/scoped", "cron": "0 3 * * *"}),
        ("GET", "/schedules/0123456789abcdef", None),
        ("DELETE", "/schedules/0123456789abcdef", None),
        ("POST", "/schedules/0123456789abcdef/run", None),
    ]
    for method, path, body in admin_only:
        response = send(api, method, path, SUBMIT_KEY, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert "needs scope admin" in response.json()["error"]
    # The same requests with an admin key get past the scope check to the route's own answer.
    answers = [send(api, method, path, ADMIN_KEY, json=body).status_code for method, path, body in admin_only]
    assert answers == [404, 409, 200, 201, 404, 404, 404]


def test_every_route_declares_the_scope_it_needs_and_an_undeclared_one_needs_admin():
    app = create_app(api_keys=[config_entry("reader", "read", READ_KEY), config_entry("boss", "admin", ADMIN_KEY)])
    undeclared = [rule.rule for rule in app.url_map.iter_rules()
                  if rule.endpoint != "static" and not hasattr(app.view_functions[rule.endpoint], "api_endpoint")]
    assert undeclared == [], "every view declares its scope with api.endpoints.endpoint or page"

    app.add_url_rule("/v1/forgotten", "forgotten", lambda: "read me")
    client = app.test_client()
    refused = client.get("/v1/forgotten", headers={"X-API-Key": READ_KEY})
    assert refused.status_code == 403 and "needs scope admin" in refused.json["error"]
    assert client.get("/v1/forgotten", headers={"X-API-Key": ADMIN_KEY}).status_code == 200


@pytest.mark.parametrize("key", [None, "", WRONG_KEY, hash_key(READ_KEY)], ids=["none", "empty", "wrong", "hash"])
def test_requests_without_a_configured_key_are_refused_and_a_stored_hash_is_not_a_key(api, key):
    for method, path in [("GET", "/jobs"), ("GET", "/models"), ("POST", "/jobs/training")]:
        response = send(api, method, path, key, json=TRAINING)
        assert response.status_code == 401, (method, path, response.text)
        assert "API key" in response.json()["error"]


def test_health_and_the_openapi_document_need_no_key(api):
    assert send(api, "GET", "/health", None).status_code == 200
    assert send(api, "GET", "/openapi.json", None).json()["openapi"].startswith("3.")


@pytest.mark.system
def test_a_plain_key_in_the_config_stops_the_app_from_starting_without_printing_the_key(tmp_path):
    plain = "my-plain-secret-key-123"
    with pytest.raises(ValueError, match="entry 2 is not name:scope:sha256hex: it looks like a plain key") as err:
        create_app(api_keys=[config_entry("ok", "read", READ_KEY), plain])
    assert plain not in str(err.value)

    # The real server refuses to start the same way.
    env = {"PATH": "", "PYTHONPATH": str(REPO), "FACEREC_DATA_DIR": str(tmp_path), "FACEREC_API_KEYS": plain}
    started = subprocess.run([sys.executable, "-m", "flask", "--app", "api:create_app()", "run", "--port", "1"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode != 0
    assert "looks like a plain key" in started.stderr and plain not in started.stdout + started.stderr


@pytest.mark.parametrize("entry, problem", [
    ("bad name:read:" + "0" * 64, "name must be"),
    ("bot:root:" + "0" * 64, "scope must be one of read, submit, admin"),
    ("bot:read:abc", "hash must be 64 hex digits"),
])
def test_malformed_key_entries_are_refused_naming_the_problem(entry, problem):
    with pytest.raises(ValueError, match=problem):
        parse_entries([entry])


@pytest.mark.system
def test_the_keys_command_prints_a_new_key_once_with_a_config_entry_holding_only_its_hash():
    def new(name: str, scope: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-m", "api.keys", "new", name, "--scope", scope], cwd=REPO,
                              env={"PATH": "", "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        return lines[1], lines[3]

    key, entry = new("ci-bot", "submit")
    other_key, _ = new("ci-bot", "submit")
    assert len(key) >= 40 and key != other_key
    assert key not in entry
    [parsed] = parse_entries([entry])
    assert (parsed.name, parsed.scope, parsed.digest) == ("ci-bot", "submit", hash_key(key))


# -- no secret in logs, records or errors -------------------------------------------------------

def _redis_text(url: str) -> str:
    """Every value in the test's Redis database, as text."""
    client = redis.Redis.from_url(url)
    parts = []
    for name in client.scan_iter():
        kind = client.type(name).decode()
        if kind == "string":
            parts.append(client.get(name))
        elif kind == "hash":
            parts += [b"%s=%s" % item for item in client.hgetall(name).items()]
        elif kind == "list":
            parts += client.lrange(name, 0, -1)
        elif kind in ("set", "zset"):
            parts += client.smembers(name) if kind == "set" else client.zrange(name, 0, -1)
        parts.append(name)
    client.close()
    return b"\n".join(parts).decode("utf-8", "replace")


def test_no_key_that_was_sent_appears_in_the_log_the_job_records_or_redis(api, redis_url):
    sent = [API_KEY, ADMIN_KEY, SUBMIT_KEY, READ_KEY, WRONG_KEY]
    for key in sent:
        send(api, "GET", "/jobs", key)
        send(api, "POST", "/jobs/training", key, json=TRAINING, headers={"Idempotency-Key": "same-for-all"})
        send(api, "POST", "/jobs/recognition", key, json={"model": "scoped", "input_prefix": "inbox"})
        send(api, "POST", "/jobs/training", key, data="[" * 100_000, headers={"Content-Type": "application/json"})
        send(api, "POST", "/models/scoped/promote", key, json={"version": "v1"})
    jobs = send(api, "GET", "/jobs", READ_KEY).json()["jobs"]
    assert "training" in {job["type"] for job in jobs}, "the submits made job records"

    stored = "\n".join(path.read_bytes().decode("utf-8", "replace")
                       for path in Path(api["data_dir"]).rglob("*") if path.is_file())
    places = {"the API log": api["log"].read_text(), "storage": stored, "redis": _redis_text(redis_url)}
    for place, text in places.items():
        for key in sent:
            assert key not in text, f"an API key that was sent is in {place}"


def test_unexpected_errors_answer_json_500_with_an_error_id_and_nothing_of_the_server(tmp_path, caplog):
    app = create_app(api_keys=[config_entry("reader", "read", READ_KEY)])
    secret_path = tmp_path / "storage" / "jobs" / "job.json"

    def broken():
        raise RuntimeError(f"a bug that names a server file: '{secret_path}'")

    def disk_failing():  # the file system failing is the store being unavailable, not a bug: 503, never 500
        raise OSError(errno.EIO, "Input/output error", str(secret_path))

    app.add_url_rule("/v1/broken", "broken", endpoint(READ)(broken))
    app.add_url_rule("/v1/disk-failing", "disk_failing", endpoint(READ)(disk_failing))
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/v1/broken", headers={"X-API-Key": READ_KEY})

    assert response.status_code == 500 and response.is_json
    error = response.json["error"]
    error_id = re.fullmatch(r"internal error \(id ([0-9a-f]{16})\); the server's log has the details", error)[1]
    for secret in (str(tmp_path), "Traceback", "RuntimeError"):
        assert secret not in response.text
    # The log has what the answer leaves out, under the same id.
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info and str(secret_path) in str(record.exc_info[1])

    unavailable = app.test_client().get("/v1/disk-failing", headers={"X-API-Key": READ_KEY})
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"]
    assert str(tmp_path) not in unavailable.text and "OSError" not in unavailable.text


# -- hostile JSON -------------------------------------------------------------------------------

def test_deeply_nested_json_gets_400_naming_the_problem_on_every_route_that_reads_a_body(api):
    document = send(api, "GET", "/openapi.json", None).json()
    with_body = [(method.upper(), path.replace("{name}", "scoped"))
                 for path, operations in document["paths"].items()
                 for method, operation in operations.items() if "requestBody" in operation]
    assert len(with_body) >= 5, with_body
    bodies = {
        "100,000 [": "[" * 100_000,
        "closed, 100 deep": "[" * 100 + "]" * 100,
        "deep inside a valid request": '{"model": "scoped", "dataset_prefix": "d", "model_params": {"a": '
                                       + "[" * 40 + "]" * 40 + "}}",
    }
    for method, path in with_body:
        for what, body in bodies.items():
            response = send(api, method, path.removeprefix("/v1"), API_KEY, data=body,
                            headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (method, path, what, response.text)
            assert "nested too deeply" in response.json()["error"], (method, path, what)


def test_json_up_to_the_depth_bound_is_accepted_and_one_level_more_is_refused():
    app = create_app(api_keys=[])
    assert app.json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    assert app.json.loads('{"a": {"b": [1, {"c": 2}]}}') == {"a": {"b": [1, {"c": 2}]}}
    with pytest.raises(BadRequest, match="nested too deeply"):
        app.json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))


# -- the app factory ----------------------------------------------------------------------------

def test_create_app_builds_independent_apps_any_number_of_times_in_one_process():
    first = create_app(api_keys=[config_entry("reader", "read", READ_KEY)]).test_client()
    second = create_app(api_keys=[config_entry("submitter", "submit", SUBMIT_KEY)]).test_client()
    for client in (first, second, create_app(api_keys=[]).test_client()):
        assert client.get("/v1/health").status_code == 200
        assert client.get("/v1/jobs").status_code == 401
    # Each app checks its own keys: the read key is known (but too weak) in the first, unknown in the second.
    assert first.post("/v1/jobs/training", headers={"X-API-Key": READ_KEY}, json={}).status_code == 403
    assert second.post("/v1/jobs/training", headers={"X-API-Key": READ_KEY}, json={}).status_code == 401


# -- docker-compose -----------------------------------------------------------------------------

SECRETS = {"FACEREC_API_KEYS", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _with_defaults(text: str) -> str:
    """A compose value as compose reads it with no variable set: ${V:-d} is d, ${V:?m} an error."""
    def value(match: re.Match) -> str:
        assert match[2] != "?", f"{match[0]} is required, so it has no default"
        return match[3] if match[2] == "-" else ""

    return _VARIABLE.sub(value, text)


def test_compose_requires_every_secret_from_the_environment_and_publishes_only_on_loopback():
    text = (REPO / "docker-compose.yml").read_text()
    for name, how, default in _VARIABLE.findall(text):
        if name in SECRETS:
            assert how == "?", f"${{{name}}} must be required (${{{name}:?message}}), not defaulted to {default!r}"
    assert {name for name, how, _ in _VARIABLE.findall(text) if how == "?"} >= SECRETS

    compose = yaml.safe_load(text)
    assert "api" in compose["services"]
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published = _with_defaults(port if isinstance(port, str) else port["host_ip"])
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback by default"


def test_a_report_of_a_model_that_cannot_exist_is_404_not_500(api):
    for name in ("%C3%92%C2%A5u%C3%81", "a" * 500):
        response = send(api, "GET", f"/models/{name}/versions/0/report", API_KEY)
        assert response.status_code == 404 and "no report for model" in response.json()["error"]
