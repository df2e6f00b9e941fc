"""facerec: the command line of the facerec API.

Reads the API's URL from FACEREC_API_URL (default http://127.0.0.1:8000) and the key from FACEREC_API_KEY.
Every command prints a readable answer, or with --json the API's JSON; it exits 0 on success, 1 when the
API refused or failed the request, 2 on bad usage, 3 when the API cannot be reached, and 141 when the
reader of its output stopped reading (`| head`), as other commands do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "default"  # the model POST /v1/recognize uses when none is named
MAX_SERVER_WAIT_S = 30  # the longest the API waits for a single photo's answer (wait_s)
# The unit of each progress stage that does not count photos (a training's fitting counts epochs).
STAGE_UNITS = {"fitting": "epoch"}
TERMINAL = ("succeeded", "failed", "cancelled")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class CliError(Exception):
    """A failure to report in one line, with the exit status it gives."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class ApiError(CliError):
    """The API answered with an error status."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class Client:
    """A small client of the /v1 API that turns every failure into a CliError with a clear message."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        if key:
            self.http.headers["X-API-Key"] = key
        self.has_key = bool(key)

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 202), **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        try:
            response = self.http.request(method, f"{self.url}/v1{path}", **kwargs)
        except requests.ConnectionError:
            raise CliError(f"cannot reach the facerec API at {self.url}: is it running? "
                           "(set FACEREC_API_URL to its address)", 3) from None
        except requests.Timeout:
            raise CliError(f"the facerec API at {self.url} did not answer in time", 3) from None
        except requests.RequestException as err:
            raise CliError(f"the request to the facerec API at {self.url} failed: {err}", 3) from None
        if response.status_code in ok:
            return response
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()[:300] or response.reason
        if response.status_code == 401:
            hint = "set FACEREC_API_KEY to your API key" if not self.has_key else "check FACEREC_API_KEY"
            raise ApiError(f"the API refused the key: {message} ({hint})", response.status_code)
        raise ApiError(f"{method} /v1{path} failed with {response.status_code}: {message}", response.status_code)

    def json(self, method: str, path: str, **kwargs) -> Any:
        return self.call(method, path, **kwargs).json()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        url = api_url(os.environ.get("FACEREC_API_URL", DEFAULT_URL))
        client = Client(url, os.environ.get("FACEREC_API_KEY", ""))
        status = args.run(client, args) or 0
        sys.stdout.flush()  # a closed pipe shows here rather than as a warning when Python exits
        return status
    except CliError as err:
        print(f"facerec: {err}", file=sys.stderr)
        return err.status
    except BrokenPipeError:
        # The reader stopped reading (`| head`) and has what it wanted. Output still buffered goes
        # nowhere, so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


def api_url(url: str) -> str:
    """The API's address from FACEREC_API_URL: an http(s) URL, with or without the /v1 the paths add."""
    parts = urlsplit(url.strip())
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        example = "http://" + url.strip() if "://" not in url else DEFAULT_URL
        raise CliError(f"FACEREC_API_URL {url!r} is not an http:// or https:// address of the API, "
                       f"such as {example}", 2)
    return url.strip().rstrip("/").removesuffix("/v1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facerec", description="Face recognition jobs from the command line (FACEREC_API_URL, FACEREC_API_KEY).",
        epilog="Exit status: 0 done, 1 refused or failed, 2 bad usage, 3 API unreachable, 141 output closed.")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        sub.set_defaults(run=run)
        return sub

    sub = command("upload-dataset", upload_dataset, "upload labelled photos: a folder (one sub-folder per person) "
                  "or a zip, to datasets/NAME/")
    sub.add_argument("name")
    sub.add_argument("path", type=Path)
    sub.add_argument("--append", action="store_true", help="add new photos to an existing dataset")

    sub = command("upload-inbox", upload_inbox, "upload photos to recognise: a folder, a zip or photo files, "
                  "to inboxes/NAME/")
    sub.add_argument("name")
    sub.add_argument("paths", type=Path, nargs="+")
    sub.add_argument("--append", action="store_true", help="add new photos to an existing inbox")

    sub = command("train", train, "train a new version of a model on an uploaded dataset")
    sub.add_argument("model")
    _source(sub, "dataset")
    sub.add_argument("--type", dest="model_type", choices=("embedding", "centroid", "cnn", "finetune"))
    sub.add_argument("--promotion-margin", type=float)
    _watch(sub)

    sub = command("enroll", enroll, "add or update people in a centroid model, without retraining")
    sub.add_argument("model")
    _source(sub, "dataset")
    _watch(sub)

    sub = command("recognize-job", recognize_job, "recognise every photo of an inbox (a bulk job)")
    sub.add_argument("model")
    _source(sub, "inbox")
    sub.add_argument("--version", help="the model version (default: current)")
    sub.add_argument("--output-prefix")
    sub.add_argument("--index", help="also add every face found to this face index (for facerec search)")
    _watch(sub)

    sub = command("recognize", recognize, "recognise the faces in one photo and print them")
    sub.add_argument("photo", type=Path)
    sub.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"the model (default: the model named '{DEFAULT_MODEL}'; facerec models lists them)")
    sub.add_argument("--version", help="the model version (default: current)")
    _wait(sub, 30.0)

    sub = command("search", search, "find the faces of a face index most like a photo's face, a job's face or a "
                  "person of a model")
    sub.add_argument("photo", type=Path, nargs="?", help="a photo: its main face (or --face) is searched")
    sub.add_argument("--index", required=True, help="the face index (a recognition job with --index fills it)")
    sub.add_argument("--job", help="search with a face of this job's results (with --key and --face)")
    sub.add_argument("--key", help="the photo's key in that job's results")
    sub.add_argument("--face", type=int, help="the face's number in the photo (default for a photo: its main face)")
    sub.add_argument("--model", help="search with a person of this model (with --person)")
    sub.add_argument("--person")
    sub.add_argument("--version", help="the model version (default: current)")
    sub.add_argument("-k", "--top", type=int, default=10, dest="k", help="how many faces (default 10)")
    sub.add_argument("--key-prefix", help="only photos under this prefix")
    sub.add_argument("--in-job", action="append", default=[], dest="in_jobs", metavar="JOB",
                     help="only faces this job added (repeatable)")
    rule = sub.add_mutually_exclusive_group()
    rule.add_argument("--far", type=float, help="match at this false-accept rate per comparison")
    rule.add_argument("--gallery-far", type=float, help="match at this false-accept rate per search of the index")
    rule.add_argument("--threshold", type=float, help="match at this similarity")
    _wait(sub, 30.0)

    sub = command("search-job", search_job, "find, for every person of a gallery model, the photos of a face index "
                  "where they appear")
    sub.add_argument("model")
    sub.add_argument("--index", required=True)
    sub.add_argument("--version", help="the model version (default: current)")
    sub.add_argument("-k", "--top", type=int, dest="k", help="faces searched per person (default 100)")
    sub.add_argument("--threshold", type=float, help="match at this similarity (default: the model's threshold)")
    sub.add_argument("-o", "--output", type=Path, help="when it succeeds, write people.jsonl here")
    _watch(sub)

    sub = command("erase", erase, "erase a person from datasets, centroid models and face indexes, with a receipt "
                  "(admin key)")
    sub.add_argument("person")
    sub.add_argument("--model", action="append", default=[], dest="models", help="a centroid model (repeat for more)")
    sub.add_argument("--index", action="append", default=[], dest="indexes", help="a face index (repeat for more)")
    sub.add_argument("--dataset", action="append", default=[], dest="datasets",
                     help="a dataset: datasets/<name>/<person>/ (repeat for more)")
    sub.add_argument("--redact-results", action="store_true", help="replace their name in job results by 'erased'")
    sub.add_argument("-o", "--output", type=Path, help="when it succeeds, write the receipt (JSON) here")
    _watch(sub)

    sub = command("recognition", recognition, "show the answer to an earlier `facerec recognize` that had none yet")
    sub.add_argument("request_id")
    _wait(sub, 0.0)

    sub = command("job", show_job, "show a job; --watch follows it with a progress bar until it ends")
    sub.add_argument("job_id")
    _watch(sub)

    sub = command("jobs", list_jobs, "list jobs, newest first")
    sub.add_argument("--type", choices=("training", "recognition", "enroll", "search", "cluster", "erasure"))
    sub.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    sub.add_argument("--limit", type=int, default=20)
    sub.add_argument("--offset", type=int, default=0)

    sub = command("cancel", cancel, "cancel a queued or running job")
    sub.add_argument("job_id")

    sub = command("results", results, "download a finished recognition job's results (JSONL)")
    sub.add_argument("job_id")
    sub.add_argument("-o", "--output", type=Path, help="file to write (default: print)")

    sub = command("models", models, "list models, or a model's versions")
    sub.add_argument("name", nargs="?")

    sub = command("promote", promote, "make a version the current one")
    sub.add_argument("model")
    sub.add_argument("version")

    sub = command("rollback", rollback, "make the previous version current again")
    sub.add_argument("model")

    command("status", status, "is the API up, which workers serve which queue, how many tasks wait")
    return parser


def _source(sub: argparse.ArgumentParser, kind: str) -> None:
    group = sub.add_mutually_exclusive_group(required=True)
    group.add_argument(f"--{kind}", help=f"an uploaded {kind}'s name")
    group.add_argument("--prefix", help="a storage prefix instead")


def _wait(sub: argparse.ArgumentParser, default: float) -> None:
    sub.add_argument("--wait", type=_seconds, default=default, metavar="SECONDS",
                     help=f"how long to wait for the answer in all (default {default:g}); then say how to "
                          "fetch it later")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 seconds or more")
    return seconds


def _watch(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--watch", action="store_true", help="follow the job with a live progress bar until it ends; "
                                                          "exit non-zero unless it succeeds")


# -- commands --------------------------------------------------------------------------------------

def upload_dataset(client: Client, args) -> int:
    if not args.path.exists():
        raise CliError(f"{args.path} does not exist", 2)
    if args.path.is_file():
        with open(args.path, "rb") as body:
            answer = client.json("POST", f"/datasets/{args.name}", params=_append(args), data=body,
                                 headers={"Content-Type": "application/zip"})
    else:
        people = sorted(p for p in args.path.iterdir() if p.is_dir() and not p.name.startswith("."))
        photos = [(person.name, photo) for person in people for photo in sorted(person.iterdir())
                  if photo.suffix.lower() in PHOTO_SUFFIXES]
        if not photos:
            raise CliError(f"no photos in {args.path}: expected {args.path}/<person>/<photo>", 2)
        answer = client.json("POST", f"/datasets/{args.name}", params=_append(args), data=_zip(
            (f"{person}/{photo.name}", photo) for person, photo in photos), headers={"Content-Type": "application/zip"})
    return _print(args, answer, f"uploaded {answer['photos']} photos of {answer.get('people')} people "
                                f"to {answer['prefix']}" + _skipped(answer))


def upload_inbox(client: Client, args) -> int:
    if len(args.paths) == 1 and args.paths[0].is_file() and args.paths[0].suffix.lower() == ".zip":
        body = open(args.paths[0], "rb")  # noqa: SIM115 (closed below)
    else:
        files = []
        for path in args.paths:
            if not path.exists():
                raise CliError(f"{path} does not exist", 2)
            found = sorted(path.iterdir()) if path.is_dir() else [path]
            files += [p for p in found if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES]
        if not files:
            raise CliError("no photos given", 2)
        body = _zip((p.name, p) for p in files)
    with body:
        answer = client.json("POST", f"/inboxes/{args.name}", params=_append(args), data=body,
                             headers={"Content-Type": "application/zip"})
    return _print(args, answer, f"uploaded {answer['photos']} photos to {answer['prefix']}" + _skipped(answer))


def train(client: Client, args) -> int:
    body = {"model": args.model, "dataset_prefix": args.prefix or f"datasets/{args.dataset}"}
    if args.model_type:
        body["model_type"] = args.model_type
    if args.promotion_margin is not None:
        body["promotion_margin"] = args.promotion_margin
    return _submit(client, args, "/jobs/training", body)


def enroll(client: Client, args) -> int:
    return _submit(client, args, "/jobs/enroll",
                   {"model": args.model, "dataset_prefix": args.prefix or f"datasets/{args.dataset}"})


def recognize_job(client: Client, args) -> int:
    body = {"model": args.model, "input_prefix": args.prefix or f"inboxes/{args.inbox}"}
    if args.version:
        body["model_version"] = args.version
    if args.output_prefix:
        body["output_prefix"] = args.output_prefix
    if args.index:
        body["index"] = args.index
    return _submit(client, args, "/jobs/recognition", body)


def recognize(client: Client, args) -> int:
    if not args.photo.is_file():
        raise CliError(f"{args.photo} is not a file", 2)
    deadline = time.monotonic() + args.wait
    fields = {"model": args.model, "wait_s": str(min(args.wait, MAX_SERVER_WAIT_S))}
    if args.version:
        fields["model_version"] = args.version
    try:
        with open(args.photo, "rb") as file:
            response = client.call("POST", "/recognize", files={"photo": (args.photo.name, file)}, data=fields)
    except ApiError as err:
        if err.http_status == 404 and args.model == DEFAULT_MODEL:
            raise CliError(f"{err} (without --model the model named '{DEFAULT_MODEL}' is used: name one with "
                           "--model; facerec models lists them)") from None
        raise
    return _show_answer(client, args, response, deadline, args.photo.name)


def recognition(client: Client, args) -> int:
    deadline = time.monotonic() + args.wait
    response = client.call("GET", f"/recognize/{args.request_id}")
    return _show_answer(client, args, response, deadline, f"request {args.request_id}")


def search(client: Client, args) -> int:
    asked = [what for what, given in (("a photo", args.photo), ("--job", args.job or args.key),
                                      ("--model/--person", args.model or args.person)) if given]
    if len(asked) != 1:
        raise CliError("search with exactly one of: a photo, --job JOB --key KEY --face N, or --model MODEL "
                       "--person PERSON" + (f" (got {' and '.join(asked)})" if asked else ""), 2)
    deadline = time.monotonic() + args.wait
    fields: dict[str, Any] = {"index": args.index, "k": args.k, "wait_s": min(args.wait, MAX_SERVER_WAIT_S)}
    fields.update({name: value for name, value in (
        ("key_prefix", args.key_prefix), ("far", args.far), ("gallery_far", args.gallery_far),
        ("threshold", args.threshold), ("face", args.face)) if value is not None})
    if args.in_jobs:
        fields["in_jobs"] = args.in_jobs
    if args.photo:
        if not args.photo.is_file():
            raise CliError(f"{args.photo} is not a file", 2)
        with open(args.photo, "rb") as file:
            response = client.call("POST", "/search", files={"photo": (args.photo.name, file)},
                                   data={name: value if isinstance(value, list) else str(value)
                                         for name, value in fields.items()})
        what = f"the {'main face' if args.face is None else f'face {args.face}'} of {args.photo.name}"
    elif args.job:
        if not args.key or args.face is None:
            raise CliError("--job needs --key (the photo's key in the job's results) and --face (its number)", 2)
        response = client.call("POST", "/search", json={**fields, "job": args.job, "key": args.key})
        what = f"face {args.face} of {args.key} (job {args.job})"
    else:
        if not (args.model and args.person):
            raise CliError("a person is searched with both --model and --person", 2)
        body = {**fields, "model": args.model, "person": args.person}
        if args.version:
            body["model_version"] = args.version
        response = client.call("POST", "/search", json=body)
        what = f"{args.person} of model {args.model}"
    answer = response.json()
    while response.status_code == 202 and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        response = client.call("GET", f"/search/{answer['id']}")
        answer = response.json()
    if response.status_code == 202:
        raise CliError(f"no answer within {args.wait:g} s (are the workers running?)")
    threshold = "no threshold" if answer["threshold"] is None else f"threshold {answer['threshold']:.3f}"
    lines = [f"{len(answer['faces'])} faces in index {answer['index']} most like {what}, {answer['matches']} "
             f"matching ({threshold}: {answer['threshold_rule']})"]
    for rank, face in enumerate(answer["faces"], start=1):
        x, y, w, h = face["box"]
        match = {True: "match", False: "-", None: "?"}[face["match"]]
        lines.append(f"{rank:>4}. {face['similarity']:.3f} {match:<5} {face['key']}  face {face['face']}  "
                     f"box {x:.0f},{y:.0f} {w:.0f}x{h:.0f}  job {face['job'][:8]}")
    return _print(args, answer, "\n".join(lines))


def search_job(client: Client, args) -> int:
    body: dict[str, Any] = {"model": args.model, "index": args.index}
    body.update({name: value for name, value in (("model_version", args.version), ("k", args.k),
                                                 ("threshold", args.threshold)) if value is not None})
    job = client.json("POST", "/jobs/search", json=body)
    return _submitted(client, args, job, "search job", "people", f"/jobs/{job['id']}/people")


def erase(client: Client, args) -> int:
    body = {"person": args.person, "models": args.models, "indexes": args.indexes, "datasets": args.datasets,
            "redact_results": args.redact_results}
    job = client.json("POST", "/erasures", json=body)
    return _submitted(client, args, job, "erasure", "receipt", f"/receipts/{job['id']}")


def _submitted(client: Client, args, job: dict, what: str, output: str, path: str) -> int:
    """Say a job was submitted; with --watch or -o follow it to its end, and with -o save its `output`."""
    if not (args.watch or args.output):
        return _print(args, job, f"submitted {what} {job['id']} ({job['state']}); "
                                 f"follow it with: facerec job {job['id']} --watch")
    _follow(client, args, job["id"])
    if args.output:
        args.output.write_bytes(client.call("GET", path).content)
        print(f"wrote the {output} to {args.output}", file=sys.stderr)
    return 0


def show_job(client: Client, args) -> int:
    if args.watch:
        return _follow(client, args, args.job_id)
    job = client.json("GET", f"/jobs/{args.job_id}")
    _print(args, job, _describe(job))
    return 0


def list_jobs(client: Client, args) -> int:
    params = {"limit": args.limit, "offset": args.offset}
    params.update({k: v for k, v in (("type", args.type), ("state", args.state)) if v})
    answer = client.json("GET", "/jobs", params=params)
    rows = [f"{job['id']}  {job['type']:<11} {job['state']:<10} {_progress(job):>12}  {job['created_at'][:19]}  "
            f"{job['params'].get('model', '')}" for job in answer["jobs"]]
    shown = f"{answer['offset'] + 1}-{answer['offset'] + len(answer['jobs'])}" if answer["jobs"] else "none"
    return _print(args, answer, "\n".join(rows + [f"({shown} of {answer['total']})"]))


def cancel(client: Client, args) -> int:
    job = client.json("POST", f"/jobs/{args.job_id}/cancel")
    return _print(args, job, f"job {job['id']} is {job['state']}")


def results(client: Client, args) -> int:
    response = client.call("GET", f"/jobs/{args.job_id}/results", ok=(200, 302), allow_redirects=False,
                           stream=True)
    if response.status_code == 302:
        # A presigned URL on the storage: fetched without the API key, which is for the API only.
        try:
            response = requests.get(response.headers["Location"], stream=True, timeout=120)
            response.raise_for_status()
        except requests.RequestException as err:
            raise CliError(f"could not download the results from storage: {err}") from None
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115 (closed below)
    lines = 0
    try:
        for chunk in response.iter_content(1024 * 1024):
            out.write(chunk)
            lines += chunk.count(b"\n")
    finally:
        if args.output:
            out.close()
        else:
            out.flush()
    if args.output:
        message = f"wrote {lines} results to {args.output}"
        print(json.dumps({"job": args.job_id, "results": lines, "file": str(args.output)}) if args.json else message)
    return 0


def models(client: Client, args) -> int:
    if args.name:
        answer = client.json("GET", f"/models/{args.name}")
        rows = [f"{'*' if v['version'] == answer['current_version'] else ' '} {v['version']}  {v.get('model_type', '')}"
                f"  accuracy {_metric(v, 'accuracy')}" for v in answer["versions"]]
        return _print(args, answer, "\n".join([f"{answer['name']} (* current)"] + rows))
    answer = client.json("GET", "/models", params={"limit": 200})
    rows = [f"{m['name']:<24} current {m['current_version'] or '-'}" for m in answer["models"]]
    return _print(args, answer, "\n".join(rows) or "no models yet")


def promote(client: Client, args) -> int:
    answer = client.json("POST", f"/models/{args.model}/promote", json={"version": args.version})
    return _print(args, answer, f"{answer['name']}: current version is now {answer['current_version']}")


def rollback(client: Client, args) -> int:
    answer = client.json("POST", f"/models/{args.model}/rollback")
    return _print(args, answer, f"{answer['name']}: rolled back, current version is now {answer['current_version']}")


# -- helpers ---------------------------------------------------------------------------------------

def _show_answer(client: Client, args, response: requests.Response, deadline: float, name: str) -> int:
    """Print a single photo's answer, asking again until the deadline while it is pending (202)."""
    answer = response.json()
    while response.status_code == 202 and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        response = client.call("GET", f"/recognize/{answer['id']}")
        answer = response.json()
    if response.status_code == 202:
        if args.json:
            print(json.dumps(answer, indent=2))
        why = "; ".join(_worker_warnings(client)) or "the workers are busy"
        raise CliError(f"no answer within {args.wait:g} s ({why}); "
                       f"fetch it later with: facerec recognition {answer['id']}")
    lines = [f"{name}: {len(answer['faces'])} face(s), model {answer['model']} {answer['model_version']}"]
    for i, face in enumerate(answer["faces"]):
        main_face = " (main face)" if i == answer.get("main_face") else ""
        x, y, w, h = face["box"]
        lines.append(f"  {_named(face):<30}  confidence {face['confidence']:.2f}  box {x:.0f},{y:.0f} "
                     f"{w:.0f}x{h:.0f}{main_face}")
    return _print(args, answer, "\n".join(lines))


def _named(face: dict) -> str:
    """A face's name, and for an unknown face the person it resembles most, with its score."""
    guess = face.get("best_guess")
    if guess and guess != face["identity"]:
        return f"{face['identity']} (best guess: {guess}, score {face['score']:.2f})"
    return face["identity"]


def _submit(client: Client, args, path: str, body: dict) -> int:
    job = client.json("POST", path, json=body)
    if args.watch:
        return _follow(client, args, job["id"])
    _warn(_worker_warnings(client))
    return _print(args, job, f"submitted {job['type']} job {job['id']} ({job['state']}); "
                             f"follow it with: facerec job {job['id']} --watch")


def status(client: Client, args) -> int:
    health = client.json("GET", "/health")
    lines = [f"API {client.url}: {health['status']}, broker {health['broker']}, storage {health['storage']}"]
    for queue, workers in (health.get("workers") or {}).items():
        waiting = (health.get("queues") or {}).get(queue)
        lines.append(f"  queue {queue:<12} {workers} worker(s)" + (f", {waiting} task(s) waiting" if waiting else ""))
    lines += [f"  warning: {warning}" for warning in health.get("warnings", [])]
    return _print(args, health, "\n".join(lines))


def _worker_warnings(client: Client) -> list[str]:
    """What the API says about queues no worker serves (nothing if it cannot say)."""
    try:
        return client.json("GET", "/health").get("warnings", [])
    except CliError:
        return []


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"facerec: warning: {warning}", file=sys.stderr)


def _skipped(answer: dict) -> str:
    if not answer.get("skipped"):
        return ""
    shown = ", ".join(answer["skipped"][:5]) + (", ..." if len(answer["skipped"]) > 5 else "")
    return f"\nskipped {len(answer['skipped'])} file(s), {answer.get('skipped_because', 'not photos')}: {shown}"


def _follow(client: Client, args, job_id: str) -> int:
    """Poll the job with a live progress bar until it ends; non-zero unless it succeeded."""
    from tqdm import tqdm

    job = client.json("GET", f"/jobs/{job_id}")
    stage = job["progress"].get("stage")
    bar = tqdm(total=job["progress"].get("total") or 0, desc=f"{job['type']} {job_id[:8]}",
               unit=STAGE_UNITS.get(stage, "photo"), file=sys.stderr, dynamic_ncols=True)
    warned_at = time.monotonic() + 3  # a job still queued after a few seconds: is anyone serving its queue?
    try:
        while True:
            if job["state"] == "queued" and warned_at and time.monotonic() > warned_at:
                warnings, warned_at = _worker_warnings(client), None
                if warnings:
                    bar.clear()
                    _warn(warnings)
            progress = job["progress"]
            if progress.get("stage") != stage:  # a new stage counts afresh, perhaps in another unit
                stage = progress.get("stage")
                bar.reset(progress.get("total") or 0)
                bar.unit = STAGE_UNITS.get(stage, "photo")
            if progress.get("total") and bar.total != progress["total"]:
                bar.total = progress["total"]
            bar.n = progress.get("done") or 0
            bar.set_postfix_str(f"{job['state']}" + (f", {progress['stage']}" if progress.get("stage") else ""))
            bar.refresh()
            if job["state"] in TERMINAL:
                break
            time.sleep(1)
            job = client.json("GET", f"/jobs/{job_id}")
    finally:
        bar.close()
    _print(args, job, _describe(job))
    if job["state"] != "succeeded":
        raise CliError(f"job {job_id} {job['state']}" + (f": {_error(job)}" if job.get("error") else ""))
    return 0


def _describe(job: dict) -> str:
    lines = [f"job {job['id']}: {job['type']}, {job['state']}, {_progress(job)}",
             f"  created {job['created_at']}  started {job['started_at'] or '-'}  finished {job['finished_at'] or '-'}"]
    if job.get("error"):
        lines.append(f"  error: {_error(job)}")
    result = job.get("result") or {}
    if job["type"] == "recognition" and result:
        lines.append(f"  {result.get('images')} photos, {result.get('faces')} faces, {result.get('unknown_faces')} "
                     f"unknown, {result.get('errors')} errors; download: facerec results {job['id']} -o results.jsonl")
    elif job["type"] == "search" and result:
        lines.append(f"  {result.get('people_found')} of {result.get('people_searched')} people found in index "
                     f"{result.get('index')}, {result.get('faces')} faces; "
                     f"report: GET /v1/jobs/{job['id']}/people/report")
    elif job["type"] == "erasure" and result:
        counts = result["counts"]
        lines.append(f"  {result['person']} erased: {counts['objects_deleted']} objects deleted, "
                     f"{counts['objects_rewritten']} rewritten, {counts['model_versions_retired']} model versions "
                     f"retired, {counts['index_faces_removed']} index faces removed; "
                     f"receipt: GET /v1/receipts/{job['id']}/html")
    elif result.get("trained") is False:  # a scheduled run that found nothing new to train on
        lines.append(f"  nothing trained: {result.get('decision')}")
    elif result.get("version"):
        lines.append(f"  version {result['version']} of {result['model']}, accuracy {_metric(result, 'accuracy')}")
        promotion = result.get("promotion")
        if promotion is not None:
            lines.append(f"  made current: {promotion['reason']}" if promotion["promote"] else
                         f"  not made current: {promotion['reason']}\n"
                         f"  make it current with: facerec promote {result['model']} {result['version']}")
        elif "enrolled" in result:
            lines.append("  made current (an enrolment always is)")
    return "\n".join(lines)


def _error(job: dict) -> str:
    """A job's error in words: the record holds {"message": ..., and details}."""
    error = job["error"]
    return error.get("message", json.dumps(error)) if isinstance(error, dict) else str(error)


def _progress(job: dict) -> str:
    progress = job["progress"]
    return f"{progress.get('done', 0)}/{progress.get('total') or '?'}"


def _metric(record: dict, name: str) -> str:
    value = (record.get("metrics") or {}).get(name)
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _append(args) -> dict:
    return {"append": "true"} if args.append else {}


def _zip(entries):
    """The photos in a zip (stored, not compressed: JPEGs do not shrink) in a temporary file, which
    requests then streams: a large dataset is never held in memory."""
    file = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, path in entries:
            archive.write(path, name)
    file.seek(0)
    return file


def _print(args, answer: Any, text: str) -> int:
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
