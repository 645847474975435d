"""Session affinity through a load balancer, with no I/O.

A ComfyUI URL may be a balancer in front of several servers. Its results can only be followed when every call of
ours reaches the backend that holds our socket. Two ways make that so without naming any balancer:

* cookies: whatever cookie the balancer sets (on the socket's 101 or any HTTP answer) is sent on every call after
  it, the socket's reconnects included (HAProxy ``cookie ... insert``, ingress-nginx, AWS ALB, Traefik);
* a key: the connection's client id as the ``clientId`` query parameter of every call (the socket already has it)
  and as the ``X-Comfy-Affinity`` header, for balancers that hash on either.

Without either, the signs are unmistakable: the queue ``number`` of a POST sent after we saw ``n`` is not above
``n`` (one ComfyUI numbers its prompts in order), or a prompt the URL just accepted is unknown to it while our
socket never dropped. Then results cannot be followed; the error says so and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

AFFINITY_HEADER = "X-Comfy-Affinity"
AFFINITY_PARAM = "clientId"
COOKIE, KEY, OFF, BROKEN = "cookie", "key", "off", "broken"
#: Queue numbers out of order before we call the URL several backends: a restart noticed late gives one.
REGRESSIONS = 2
#: Prompts (or outputs) that vanished while our socket stayed open, before the URL is called several backends:
#: one can be another client clearing the queue, and the verdict fails every later prompt until a reset.
VANISHED = 2

FIX = (
    "enable session affinity on the balancer (cookie stickiness, e.g. HAProxy 'cookie SRV insert', or a hash on "
    f"the '{AFFINITY_PARAM}' query parameter or the {AFFINITY_HEADER} header, e.g. HAProxy 'balance url_param "
    f"{AFFINITY_PARAM}' or nginx 'hash $arg_{AFFINITY_PARAM} consistent'), or list the servers behind it individually"
)


def no_affinity_message(url: str, sign: str) -> str:
    return (
        f"{url} is a load balancer without session affinity ({sign}): results cannot be followed through it. "
        f"To fix it, {FIX}."
    )


@dataclass
class Affinity:
    """What one server URL's affinity looks like from here: the cookies to send, the key, and what was seen."""

    key: str | None = None  # None: no key is sent
    cookies: dict[str, str] = field(default_factory=dict)
    backend_changes: int = 0
    broken: str | None = None  # why we know the URL is several backends without affinity
    highest: int | None = None  # the highest queue number a POST got on the current socket
    regressions: int = 0
    vanishings: int = 0

    @property
    def mode(self) -> str:
        if self.broken:
            return BROKEN
        return COOKIE if self.cookies else KEY if self.key else OFF

    def headers(self) -> dict[str, str]:
        """Headers for every request and the socket's handshake."""
        out = {}
        if self.cookies:
            out["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.key:
            out[AFFINITY_HEADER] = self.key
        return out

    def params(self) -> dict[str, str]:
        """Query parameters for every HTTP request."""
        return {AFFINITY_PARAM: self.key} if self.key else {}

    def absorb(self, set_cookies: Iterable[str]) -> bool:
        """Take the ``Set-Cookie`` values of an answer; True when a cookie we were sending now has another value
        (the balancer sent us to another backend: the old one is gone or was taken out)."""
        changed = False
        for raw in set_cookies:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(raw)
            except CookieError:
                continue
            for name, morsel in jar.items():
                old = self.cookies.get(name)
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                    continue
                if old is not None and old != morsel.value:
                    changed = True
                self.cookies[name] = morsel.value
        if changed:
            self.backend_changes += 1
            self.highest, self.regressions = None, 0  # the new backend numbers its prompts from its own count
        return changed

    def forget(self) -> None:
        """Start over (a manual reset): no verdict, no cookies, no numbers; the key stays."""
        self.cookies.clear()
        self.broken, self.highest, self.regressions, self.vanishings = None, None, 0, 0

    def reconnected(self) -> None:
        """A new socket: the server may have restarted, so queue numbers start over."""
        self.highest = None

    def posted(self, number: int | None, seen_before: int | None) -> bool:
        """A POST sent when ``seen_before`` was the highest number we knew got ``number``. True when this makes
        the URL proven to be several backends without affinity."""
        if number is None:
            return False
        if seen_before is not None and number <= seen_before:
            self.regressions += 1
            if self.regressions >= REGRESSIONS:
                return self.mark_broken(f"queue numbers went back: {number} after {seen_before}")
        self.highest = number if self.highest is None else max(self.highest, number)
        return False

    def mark_broken(self, sign: str) -> bool:
        """Record the first proof that the URL is several backends; True the first time (say it once)."""
        if self.broken is not None:
            return False
        self.broken = sign
        return True

    def vanished(self, what: str) -> bool:
        """Something it gave us is gone while our socket never dropped (a prompt it accepted, an output its history
        lists): no single ComfyUI does that, short of another client deleting it. The URL is proven several
        backends at the second such sign, or after a queue number went back; True when that happens now."""
        self.vanishings += 1
        if self.vanishings >= VANISHED or self.regressions:
            return self.mark_broken(what)
        return False

    def suspicion(self, what: str) -> str:
        """The sign to put in an error: the proof once there is one, else this first, hedged sign."""
        return self.broken or f"{what}, unless another client deleted it"
