"""The commented starter config `batchpipe init` writes, and the few sample rows it reads.

It must always load (tests/test_config_schema.py checks it with load_config and the JSON
Schema): a user's first `batchpipe estimate` on it should work before they change a thing.
"""

from __future__ import annotations

# {rows}: the sample input's file name (beside the config) as a quoted YAML string, padded to the comments.
STARTER_CONFIG = """\
# A batchpipe job. Check it with `batchpipe estimate {config}`; every field is in the README ("Job config").
# Editor completion: `batchpipe schema > batchpipe.schema.json`, then make the first line of this file
#   # yaml-language-server: $schema=batchpipe.schema.json

model: gpt-4o-mini                      # required: the model every request uses
endpoint: /v1/chat/completions          # or /v1/responses, /v1/embeddings, /v1/completions, /v1/moderations

input:
  path: {rows}# required; a relative path starts at this file's directory
  # format: jsonl                       # jsonl or csv; default from the suffix
  id: id                                # the field that identifies each row (default: the row number)

prompt:
  system: You classify customer messages. Answer with one word.
  user: "Message: {{text}}"               # {{field}} inserts a field of the row; {{{{ and }}}} are literal braces

params:                                 # merged into every request body
  temperature: 0
  max_tokens: 5                         # bounds each answer, and so the worst-case cost

output:
  key: answer                           # each output row gets the answer under this key
  # truncated: keep                     # keep or fail an answer cut at max_tokens

limits:
  max_attempts: 3                       # tries per request when a retry may help
  # budget_usd: 5                       # submit never lets the worst-case spend pass this
  # max_requests_per_shard: 50000
  # enqueued_tokens: 2000000            # your organisation's enqueued-token limit for the model

# provider:
#   base_url: http://127.0.0.1:8080/v1  # e.g. `batchpipe emulator`, to rehearse without paying
"""

STARTER_ROWS = (
    b'{"id": "m1", "text": "My parcel arrived broken."}\n'
    b'{"id": "m2", "text": "Thanks, the refund came through!"}\n'
    b'{"id": "m3", "text": "How do I change my address?"}\n'
)
