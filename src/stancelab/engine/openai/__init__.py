"""The OpenAI wire protocol, in pieces the backends share.

``codec`` builds request payloads and reads answers (both log-probability shapes) for
the in-process llama.cpp engine and the HTTP backend alike; ``options`` holds the HTTP
backend's settings; ``transport`` is one HTTP exchange; ``retry`` the retry policy
(tenacity); ``routing`` picks a replica (least-in-flight, or consistent hashing by
conversation); ``accounting`` keeps the token and cost totals.
"""
