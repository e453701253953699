"""Remote versions: a route's version served by another V2 server (Triton, KServe, MLServer, another gateway).

`settings` (a remote version's block), `ejection` (the outlier-ejection state machine), `endpoint` (one pooled
client per endpoint: the retry rule, faults as gateway errors, health), `registry` (every endpoint the config names,
kept across reloads; builds the versions), `metadata` (the remote signature), `backend` (the version: the forwarded
request path and the decoded one for shadows and validation), `answer` (the remote answer fixed for the client),
`sampling` (a decoded copy for the side channels, only of the requests they sample), `metrics` (per endpoint).
"""
