"""The interactive chat loop: line editing, commands, streaming output, Ctrl-C / Ctrl-D handling.

Input goes through GNU readline when the terminal has one: arrow keys, a history file, no line-length limit,
and a pasted multi-line text stays one message (bracketed paste). A ``\"\"\"`` line opens a multi-line message
that the next line ending in ``\"\"\"`` closes, as in ollama. Ctrl-C during a reply stops that reply and keeps
the session; Ctrl-C at the prompt asks for /quit; Ctrl-D exits cleanly. No input and no setting ends the
session with a traceback: bad values and failed saves are one line and the conversation is kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson

from common.errors import first_line
from inference.generate import ChatSession, Reply, as_data_prep_line, turns
from inference.sampling import Sampling, SettingError
from inference.saved import SavedChatError, next_id, read_saved

HELP = f"""commands:
  /reset              forget the conversation
  /set NAME VALUE     {", ".join(Sampling.names())}
  /params             show the settings and the last reply's speed
  /undo               drop the last exchange
  /retry              regenerate the last reply
  /save FILE          append the conversation to FILE as a data_prep JSONL line (complete replies only)
  /load FILE [ID]     resume a conversation /save wrote (the file's last one, or the one with this id)
  /quit               exit (Ctrl-D works too)
  /help               this list
  \"\"\"                 start a multi-line message; end it with a line ending in \"\"\""""
BLOCK = '"""'
MARKS = {
    "interrupted": "[reply interrupted: kept in the conversation, never written by /save]",
    "length": "[reply cut at max_new_tokens: kept in the conversation, never written by /save]",
    "empty": "[empty reply: kept in the conversation, never written by /save]",
}


def setup_readline(history_file: str | None):
    """GNU readline with a persistent history, when available; returns a function that saves the history."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input()
        return lambda: None
    readline.parse_and_bind("set enable-bracketed-paste on")
    if not history_file:
        return lambda: None
    path = Path(history_file).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            readline.read_history_file(str(path))
    except OSError:
        return lambda: None
    readline.set_history_length(1000)

    def save():
        try:
            readline.write_history_file(str(path))
        except OSError:
            pass

    return save


class ChatApp:
    """Reads lines, runs commands or chat turns, writes to ``out``."""

    def __init__(self, session: ChatSession, verbose: bool = False, out=sys.stdout):
        self.session, self.verbose, self.out = session, verbose, out
        self.last: Reply | None = None
        self.saved = 0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def reply(self, text: str) -> bool:
        """Answer ``text``; False if generation failed (the conversation is then unchanged)."""
        self.out.write("bot: ")
        self.out.flush()

        def emit(chunk: str) -> None:
            self.out.write(chunk)
            self.out.flush()

        try:
            self.last = self.session.respond(text, emit)
        except Exception as exc:  # a library error must not end the session or lose the conversation
            self.say(f"\n[generation failed: {first_line(exc)}; the conversation is kept]")
            return False
        self.out.write("\n")
        if self.session.trimmed_turns:
            self.say(f"[history trimmed: {self.session.trimmed_turns} oldest turns left out to fit the context]")
        if self.session.cut_tokens:
            self.say(
                f"[message too long: its first {self.session.cut_tokens} tokens left out to fit the context; "
                "a smaller max_new_tokens leaves more room]"
            )
        if not self.last.complete:
            self.say(MARKS.get(self.last.stop) or MARKS["empty"])
        if self.verbose:
            self.say(self.stats())
        self.out.flush()
        return True

    def stats(self) -> str:
        r = self.last
        if r is None:
            return "[no reply yet]"
        ttft = f"{r.ttft:.3f} s" if r.ttft is not None else "-"
        tps = f"{r.tokens_per_s:.1f}" if r.tokens_per_s else "-"
        return (
            f"[{r.new_tokens} tokens, stop: {r.stop}, time to first token {ttft}, {tps} tokens/s, "
            f"prompt {r.prompt_tokens} tokens, {r.reused_tokens} from cache]"
        )

    def set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        if not key or not value.strip():
            self.say(f"usage: /set NAME VALUE, NAME one of {', '.join(Sampling.names())}")
            return
        try:
            self.session.set_sampling(self.session.sampling.with_value(key, value))
        except SettingError as exc:
            self.say(f"[not set: {exc}]")
            return
        self.say(f"[{key} = {getattr(self.session.sampling, key)}]")

    def save(self, arg: str) -> None:
        s = self.session
        if not arg:
            self.say("usage: /save FILE")
            return
        keep = [e for e in s.exchanges if e.reply.complete]
        left = len(s.exchanges) - len(keep)
        if not keep:
            self.say("[nothing to save" + (f": {left} replies were interrupted, cut or empty]" if left else "]"))
            return
        try:
            path = Path(arg).expanduser()
            conv_id = next_id(path)  # unique in the file, whichever session wrote the others
            with open(path, "ab") as fh:
                fh.write(orjson.dumps(as_data_prep_line(turns(keep), conv_id)) + b"\n")
        except (OSError, ValueError, RuntimeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self.say(f"[cannot write {arg}: {why}; the conversation is kept, try another path]")
            return
        self.saved += 1
        note = f" ({left} interrupted, cut or empty replies left out)" if left else ""
        self.say(f"[conversation appended to {arg} as {conv_id}{note}]")

    def load(self, arg: str) -> None:
        """``/load FILE [ID]``: the conversation replaces the current one (its KV cache is rebuilt on the next turn)."""
        name, _, conv_id = arg.partition(" ")
        if not name:
            self.say("usage: /load FILE [ID]")
            return
        try:
            found_id, exchanges = read_saved(name, conv_id.strip() or None)
        except SavedChatError as exc:
            self.say(f"[not loaded: {exc}; the conversation is kept]")
            return
        self.session.reset()
        self.session.exchanges.extend(exchanges)
        self.say(f"[loaded {found_id} from {name}: {len(exchanges)} exchanges; type to go on]")

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        s = self.session
        if name in ("quit", "exit", "bye"):
            return False
        if name == "help":
            self.say(HELP)
        elif name == "reset":
            s.reset()
            self.say("[conversation reset]")
        elif name == "params":
            self.say(s.sampling.show())
            self.say(self.stats())
        elif name == "set":
            self.set(arg)
        elif name == "undo":
            if s.exchanges:
                s.exchanges.pop()
                self.say("[last exchange removed]")
            else:
                self.say("[nothing to undo]")
        elif name == "retry":
            if not s.exchanges:
                self.say("[nothing to retry]")
            else:
                last = s.exchanges.pop()
                if not self.reply(last.user):
                    s.exchanges.append(last)
        elif name == "save":
            self.save(arg)
        elif name == "load":
            self.load(arg)
        else:
            self.say(f"[unknown command /{name}; /help lists them]")
        return True

    def read_message(self, read, first: str) -> str:
        """The rest of a \"\"\" block: lines until one ends with \"\"\" (Ctrl-D ends it too)."""
        lines, text = [], first[len(BLOCK) :]
        while not text.rstrip().endswith(BLOCK):
            lines.append(text)
            try:
                text = read("... ")
            except EOFError:
                return "\n".join(lines)
        lines.append(text.rstrip()[: -len(BLOCK)])
        return "\n".join(lines)

    def loop(self, read=input, banner: str = "") -> int:
        if banner:
            self.say(banner)
        self.say('chat: type a message; """ for several lines; /help for commands, /quit or Ctrl-D to leave')
        while True:
            try:
                line = read(">>> ")
                if line.lstrip().startswith(BLOCK):
                    line = self.read_message(read, line.lstrip())
            except EOFError:
                self.say("\nbye")
                return 0
            except KeyboardInterrupt:
                self.say("\n[use /quit or Ctrl-D to leave]")
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/") and "\n" not in text:
                if not self.command(text):
                    self.say("bye")
                    return 0
                continue
            self.reply(text)


def banner(loaded, session: ChatSession) -> str:
    return (
        f"model {loaded.source} | context {session.context} tokens | device {loaded.device} | "
        f"dtype {loaded.dtype}\nsampling: {session.sampling.show()}"
    )


def default_history_file() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "bloomchat" / "chat_history")
