"""Creates the resources the contract run starts from, through the admin API.

Writes one libFuzzer-style dictionary per kind of id into DIR, which
schemathesis.toml binds to path parameters: every operation then meets a real
id in every phase, whatever its random draws, besides the ids the stateful
phase gets by following the document's links. Resources that delete
operations may consume live in their own apps, so no deletion can take away
what another operation is using.

Usage: fixtures.py BASE_URL DIR (the admin key in PICLOUD_CONTRACT_KEY)
"""

import json
import os
import sys
import time
import urllib.request

DOOMED = 10


def call(base, method, path, body):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Bearer " + os.environ["PICLOUD_CONTRACT_KEY"],
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def dead_letters_of(base, app, count):
    """Makes `count` dead letters in `app`: a kv trigger whose handler always
    fails once, fired by `count` writes; waits for the dispatcher to give up."""
    scripts = f"/api/v1/admin/apps/{app}/scripts"
    failing = call(base, "POST", scripts, {"name": "always-fails", "source": 'throw "fixture failure"'})["id"]
    call(
        base,
        "POST",
        f"/api/v1/admin/apps/{app}/triggers",
        {
            "kind": "kv",
            "script_id": failing,
            "config": {"collection": "dead-letter-source"},
            "retry": {"max_attempts": 1, "backoff": "fixed", "base_ms": 1},
        },
    )
    source = f'for i in 0..{count} {{ kv::set("dead-letter-source", "k" + i, i); }}'
    call(base, "POST", scripts, {"name": "poke", "source": source})
    call(base, "POST", f"/api/v1/apps/{app}/invoke/poke", {})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        letters = call(base, "GET", f"/api/v1/admin/apps/{app}/dead-letters?limit=200", None)
        if len(letters) >= count:
            return [letter["id"] for letter in letters[:count]]
        time.sleep(0.1)
    raise SystemExit(f"the dispatcher made no {count} dead letters within 60 s")


def main():
    base, out = sys.argv[1], sys.argv[2]
    kept = call(base, "POST", "/api/v1/admin/apps", {"name": "contract-kept"})["id"]
    scripts = f"/api/v1/admin/apps/{kept}/scripts"
    kept_script = call(base, "POST", scripts, {"name": "kept", "source": "#{ ok: true, got: ctx.request.body }"})["id"]
    edited = call(base, "POST", scripts, {"name": "edited", "source": "1"})["id"]
    kept_trigger = call(
        base,
        "POST",
        f"/api/v1/admin/apps/{kept}/triggers",
        {"kind": "kv", "script_id": kept_script, "config": {"collection": "contract"}},
    )["id"]

    # Unsigned, so the inbound endpoint accepts what the schema allows.
    inbox_trigger = call(
        base,
        "POST",
        f"/api/v1/admin/apps/{kept}/triggers",
        {"kind": "email", "script_id": kept_script},
    )["id"]

    container = call(base, "POST", "/api/v1/admin/apps", {"name": "contract-container"})["id"]
    doomed_scripts = [
        call(base, "POST", f"/api/v1/admin/apps/{container}/scripts", {"name": f"doomed{i}", "source": "1"})["id"]
        for i in range(DOOMED)
    ]
    holder = call(base, "POST", f"/api/v1/admin/apps/{container}/scripts", {"name": "holder", "source": "1"})["id"]
    doomed_triggers = [
        call(
            base,
            "POST",
            f"/api/v1/admin/apps/{container}/triggers",
            {"kind": "pubsub", "script_id": holder, "config": {"topic": f"doomed.{i}"}},
        )["id"]
        for i in range(DOOMED)
    ]
    doomed_secrets = [
        call(base, "POST", f"/api/v1/admin/apps/{container}/secrets", {"name": f"doomed.{i}", "value": i})["name"]
        for i in range(DOOMED)
    ]
    doomed_apps = [
        call(base, "POST", "/api/v1/admin/apps", {"name": f"contract-doomed-{i}"})["id"] for i in range(DOOMED)
    ]
    doomed_keys = [
        call(base, "POST", "/api/v1/admin/api-keys", {"name": f"doomed{i}", "scopes": ["app:read"]})["id"]
        for i in range(DOOMED)
    ]
    kept_dead_letter = dead_letters_of(base, kept, 1)[0]
    doomed_dead_letters = dead_letters_of(base, container, DOOMED)
    dictionaries = {
        "kept_app": [kept],
        "kept_script_name": ["kept"],
        "edited_script": [edited],
        "kept_script": [kept_script],
        "kept_trigger": [kept_trigger],
        "inbox_trigger": [inbox_trigger],
        "doomed_triggers": doomed_triggers,
        "kept_dead_letter": [kept_dead_letter],
        "doomed_dead_letters": doomed_dead_letters,
        "container_app": [container],
        "doomed_scripts": doomed_scripts,
        "doomed_secrets": doomed_secrets,
        "doomed_apps": doomed_apps,
        "doomed_keys": doomed_keys,
    }
    for name, values in dictionaries.items():
        with open(os.path.join(out, name + ".dict"), "w", encoding="utf-8") as fd:
            fd.writelines(f'"{value}"\n' for value in values)


if __name__ == "__main__":
    main()
