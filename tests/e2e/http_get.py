"""GET a URL inside the e2e container, where there is no curl:

    python3 http_get.py URL [TOKEN]

Sends "Authorization: Bearer TOKEN" when a token is given. Follows
redirects keeping cookies, as a browser does (the dashboard answers
/?token=... with a cookie and a redirect to /). Prints the final HTTP
status on standard output and writes the body to /tmp/http.body. Exit
status 0 when the server answered (any status), 1 when it could not be
reached.
"""

import sys
import urllib.error
import urllib.request

url = sys.argv[1]
req = urllib.request.Request(url)
if len(sys.argv) > 2:
    req.add_header("Authorization", "Bearer " + sys.argv[2])
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
try:
    with opener.open(req, timeout=10) as resp:
        status, body = resp.status, resp.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError as e:
    print(f"unreachable: {e}", file=sys.stderr)
    sys.exit(1)
with open("/tmp/http.body", "wb") as f:
    f.write(body)
print(status)
