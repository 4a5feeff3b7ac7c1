"""Abuse limits: a request rate per partner, and failed authentications per
client address and per partner name, answered 429 (see docs/security.md).

`rates` reads and writes rates and the answer fields that announce them;
`counters` keeps the counts, in process or in Redis; `service` is what the
grant path calls.
"""
