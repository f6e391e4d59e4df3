"""The interactive chat loop: commands, streaming output, Ctrl-C / Ctrl-D handling.

Ctrl-C during a reply stops that reply and keeps the session; Ctrl-C at the prompt asks for /quit;
Ctrl-D exits cleanly. Typed role tags stay text (the chat format escapes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from inference.generate import DEFAULTS, ChatSession, Reply, as_data_prep_line

HELP = """commands:
  /reset              forget the conversation
  /set NAME VALUE     temperature, top_p, top_k, repetition_penalty, max_new_tokens, do_sample, seed
  /params             show parameters and the last reply's speed
  /undo               drop the last exchange
  /retry              regenerate the last reply
  /save FILE          append the conversation to FILE as a data_prep JSONL line
  /quit               exit (Ctrl-D works too)
  /help               this list"""

CASTS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float,
         "max_new_tokens": int, "do_sample": lambda v: v.lower() in ("1", "true", "yes", "on"),
         "seed": lambda v: None if v.lower() == "none" else int(v)}


class ChatApp:
    """Reads lines, runs commands or chat turns, writes to ``out``."""

    def __init__(self, session: ChatSession, verbose: bool = False, out=sys.stdout):
        self.session, self.verbose, self.out = session, verbose, out
        self.last: Reply | None = None
        self.saved = 0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def reply(self, text: str) -> None:
        self.out.write("bot: ")
        self.out.flush()

        def emit(chunk: str) -> None:
            self.out.write(chunk)
            self.out.flush()

        self.last = self.session.respond(text, emit)
        self.out.write("\n")
        if self.session.trimmed_turns:
            self.say(f"[history trimmed: {self.session.trimmed_turns} oldest turns left out to fit the context]")
        if self.last.stop == "interrupted":
            self.say("[reply interrupted]")
        if self.verbose:
            self.say(self.stats())
        self.out.flush()

    def stats(self) -> str:
        r = self.last
        if r is None:
            return "[no reply yet]"
        ttft = f"{r.ttft:.3f} s" if r.ttft is not None else "-"
        tps = f"{r.tokens_per_s:.1f}" if r.tokens_per_s else "-"
        return f"[{r.new_tokens} tokens, stop: {r.stop}, time to first token {ttft}, {tps} tokens/s]"

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        s = self.session
        if name in ("quit", "exit"):
            return False
        if name == "help":
            self.say(HELP)
        elif name == "reset":
            s.history.clear()
            self.say("[conversation reset]")
        elif name == "params":
            self.say(" ".join(f"{k}={v}" for k, v in s.params.items()))
            self.say(self.stats())
        elif name == "set":
            key, _, value = arg.partition(" ")
            if key not in CASTS or not value:
                self.say(f"usage: /set NAME VALUE, NAME one of {', '.join(CASTS)}")
            else:
                try:
                    s.params[key] = CASTS[key](value.strip())
                    self.say(f"[{key} = {s.params[key]}]")
                except ValueError:
                    self.say(f"[{key}: {value!r} is not a valid value]")
        elif name == "undo":
            if s.history:
                del s.history[-2:]
                self.say("[last exchange removed]")
            else:
                self.say("[nothing to undo]")
        elif name == "retry":
            if not s.history:
                self.say("[nothing to retry]")
            else:
                user = s.history[-2].text
                del s.history[-2:]
                self.reply(user)
        elif name == "save":
            if not arg:
                self.say("usage: /save FILE")
            elif not s.history:
                self.say("[nothing to save]")
            else:
                self.saved += 1
                line = orjson.dumps(as_data_prep_line(s.history, f"chat-{self.saved}"))
                with open(Path(arg).expanduser(), "ab") as fh:
                    fh.write(line + b"\n")
                self.say(f"[conversation appended to {arg}]")
        else:
            self.say(f"[unknown command /{name}; /help lists them]")
        return True

    def loop(self, read=input) -> int:
        self.say("chat: type a message; /help for commands, /quit or Ctrl-D to leave")
        while True:
            try:
                line = read(">>> ")
            except EOFError:
                self.say("\nbye")
                return 0
            except KeyboardInterrupt:
                self.say("\n[use /quit or Ctrl-D to leave]")
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    self.say("bye")
                    return 0
                continue
            self.reply(line.strip())


def default_params(greedy: bool) -> dict:
    params = dict(DEFAULTS)
    if greedy:
        params["do_sample"] = False
    return params
