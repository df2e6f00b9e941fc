"""The search job: every person of a gallery model against a face index, the batch form of "where else
does this face appear?". Per person: the faces that match their mean face, and the photos they are in, as
JSON lines and an HTML report with a thumbnail of each face boxed."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterator

from PIL import Image, ImageDraw

from pipeline.decode import decode_photo
from pipeline.face_index import FaceIndex
from pipeline.recognize import LoadedModel
from pipeline.search import person_query
from pipeline.storage import Storage, StorageError

THUMBNAIL = 112  # pixels, the longer side
THUMBNAILS_PER_PERSON = 12
PEOPLE_IN_REPORT = 500  # the report shows this many people with matches; the JSON lines hold them all
BOX_COLOUR = (46, 204, 113)


def find_people(index: FaceIndex, loaded: LoadedModel, people: list[str], k: int, in_jobs: list[str] = (),
                key_prefix: str | None = None, threshold: float | None = None,
                on_person: Callable[[int], None] = lambda done: None) -> Iterator[dict]:
    """For each person, the faces among the k most like their mean face that match it (at `threshold`, else
    the model's own), most similar first, and the photos those faces are in. on_person(done) after each
    person (it may raise to stop)."""
    for done, person in enumerate(people, start=1):
        query = person_query(loaded, person)
        limit = query.threshold if threshold is None else threshold
        matches = [hit for hit in index.search(query.vector, k, in_jobs, key_prefix) if hit.similarity >= limit]
        yield {"person": person, "threshold": round(limit, 4), "photos": list(dict.fromkeys(h.key for h in matches)),
               "faces": [hit.to_json() for hit in matches], "searched_top": k,
               "more_may_match": len(matches) == k}  # every face of the top k matched: raise k to see more
        on_person(done)


def report_html(storage: Storage, lines: list[dict], title: str, facts: dict[str, str],
                summary: str | None = None, images: dict[tuple[str, tuple], bytes | None] | None = None) -> str:
    """A self-contained page: per person (or group) with faces, their photo count and a thumbnail of each
    face (up to THUMBNAILS_PER_PERSON), boxed, with its similarity; `summary` replaces the sentence that
    counts the people found; `images` holds thumbnails already made, by (key, box)."""
    found = [line for line in lines if line["faces"]]
    sections = []
    for line in found[:PEOPLE_IN_REPORT]:
        tiles = []
        for face in line["faces"][:THUMBNAILS_PER_PERSON]:
            spot = (face["key"], tuple(face["box"]))
            image = images[spot] if images is not None and spot in images else thumbnail(storage, *spot)
            picture = (f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(image).decode()}">' if image
                       else '<div class="missing">photo unreadable</div>')
            name = html.escape(face["key"].rsplit("/", 1)[-1])
            tiles.append(f'<figure>{picture}<figcaption title="{html.escape(face["key"])}">{name}<br>'
                         f'{face["similarity"]:.3f}</figcaption></figure>')
        more = len(line["photos"]) - THUMBNAILS_PER_PERSON
        sections.append(f'<section><h2>{html.escape(line["person"])} <small>{len(line["photos"])} photo(s)'
                        f'{f", {more} more not shown" if more > 0 else ""}</small></h2>'
                        f'<div class="grid">{"".join(tiles)}</div></section>')
    cut = (f"<p>The first {PEOPLE_IN_REPORT} people with matches are shown; people.jsonl holds all "
           f"{len(found)}.</p>" if len(found) > PEOPLE_IN_REPORT else "")
    nobody = [line["person"] for line in lines if not line["faces"]]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><table>{rows}</table>"
            f"<p>{html.escape(summary or f'{len(found)} of {len(lines)} people appear in the index.')}</p>"
            f"{cut}{''.join(sections)}"
            + (f"<h2>Not found</h2><p>{html.escape(', '.join(nobody))}</p>" if nobody else "")
            + "</body></html>\n")


def thumbnail(storage: Storage, key: str, box: list[float]) -> bytes | None:
    """A JPEG of the face and some of its surroundings, the face boxed; None if the photo cannot be read."""
    try:
        photo = decode_photo(storage.get(key))
    except (StorageError, ValueError, OSError):
        return None
    image = Image.fromarray(photo.pixels)
    x_scale, y_scale = photo.scale
    x, y, width, height = box[0] / x_scale, box[1] / y_scale, box[2] / x_scale, box[3] / y_scale
    margin = 0.4 * max(width, height)
    crop = (max(0, x - margin), max(0, y - margin), min(image.width, x + width + margin),
            min(image.height, y + height + margin))
    image = image.crop(tuple(round(v) for v in crop))
    ImageDraw.Draw(image).rectangle((x - crop[0], y - crop[1], x - crop[0] + width, y - crop[1] + height),
                                    outline=BOX_COLOUR, width=max(2, round(max(image.size) / 60)))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


STYLE = """
body { font-family: system-ui, sans-serif; color: #222; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { border-bottom: 2px solid #345; } h2 small { color: #667; font-weight: 400; font-size: .75em; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .2em .8em; border-bottom: 1px solid #ddd; }
.grid { display: flex; flex-wrap: wrap; gap: .5em; }
figure { margin: 0; width: 112px; font-size: .75em; color: #556; text-align: center; overflow-wrap: anywhere; }
figure img { display: block; margin: 0 auto; border-radius: 4px; }
.missing { height: 112px; background: #eee; display: grid; place-items: center; }
"""
