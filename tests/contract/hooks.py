"""schemathesis hooks for the contract test (SCHEMATHESIS_HOOKS=hooks): the two request rules
JSON Schema cannot state are kept out of the *positive* cases, where the fuzzer would otherwise
call a 422 a "valid body rejected". Both are documented in the schema's descriptions and the
server answers them with 422 and the field named (tests/test_serve.py holds that):

- labels x per_label <= max_images (a product of two fields);
- guidance_interval: lo <= hi (an order between two items).
"""

import os

import schemathesis

MAX_IMAGES = int(os.environ.get("UDIFF_FUZZ_MAX_IMAGES", "16"))


@schemathesis.hook
def filter_body(ctx, body):
    if not isinstance(body, dict):
        return True
    labels, per_label = body.get("labels"), body.get("per_label", 1)
    if (isinstance(labels, list) and type(per_label) in (int, float)  # 4.0 is an integer too
            and len(labels) * per_label > MAX_IMAGES):
        return False
    interval = body.get("guidance_interval")
    if (isinstance(interval, list) and len(interval) == 2
            and all(type(x) in (int, float) for x in interval) and interval[0] > interval[1]):
        return False
    return True
