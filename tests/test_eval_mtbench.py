"""MT-Bench: rating parser, judge client against a fake OpenAI-compatible server, answer generation."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from eval.mtbench import (JudgeClient, generate_answers, judge_answers, parse_rating, read_questions,
                          summarize_scores, write_jsonl)
from model import Transformer, get_config

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
]
ANSWERS = [{"question_id": q["question_id"], "answer_id": "a", "model_id": "m", "choices": [{"index": 0, "turns": ["A1", "A2"]}],
            "tstamp": 0.0} for q in QUESTIONS]


@pytest.mark.parametrize("text, rating", [
    ("Rating: [[8]]", 8.0), ("[[8.5]]", 8.5), ("I give [8] overall", 8.0), ("no verdict here", None),
    ("[[3]] then [[9]]", 3.0), ("Rating: [[ten]]", None),
])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


class FakeJudge(BaseHTTPRequestHandler):
    replies: list[str] = []
    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        content = FakeJudge.replies[len(FakeJudge.requests) - 1]
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    FakeJudge.requests = []
    server = HTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_judge_prompts_ratings_and_means(judge_server):
    FakeJudge.replies = ["Fine. Rating: [[8]]", "[[8.5]]", "Correct [7]", "I cannot rate this."]
    client = JudgeClient(judge_server, "judge-model", api_key="k")
    judgments = judge_answers(QUESTIONS, ANSWERS, client)
    reqs = FakeJudge.requests
    assert [r["path"] for r in reqs] == ["/v1/chat/completions"] * 4 and reqs[0]["auth"] == "Bearer k"
    assert all(r["model"] == "judge-model" and r["temperature"] == 0 for r in reqs)
    assert [j["judge"][1] for j in judgments] == ["single-v1", "single-v1-multi-turn", "single-math-v1",
                                                  "single-math-v1-multi-turn"]
    system, user = (m["content"] for m in reqs[0]["messages"])
    assert system == "You are a helpful assistant."
    assert user.endswith("[Question]\nWrite a poem.\n\n[The Start of Assistant's Answer]\nA1\n[The End of Assistant's Answer]")
    math_user = reqs[2]["messages"][1]["content"]
    assert "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" in math_user
    multi = reqs[3]["messages"][1]["content"]
    assert "### User:\nAnd 3+3?\n\n### Reference answer:\n6\n\n" in multi and "### Assistant A:\nA2\n\n" in multi
    assert "focus on the assistant's answer to the second" in reqs[1]["messages"][0]["content"]
    assert [j["score"] for j in judgments] == [8.0, 8.5, 7.0, None]
    summary = summarize_scores(judgments)
    assert summary == {"turn_1": 7.5, "turn_2": 8.5, "overall": pytest.approx(23.5 / 3), "n_rated": 3, "n_excluded": 1}


def test_unreachable_judge_is_a_clear_error():
    with pytest.raises(ConnectionError, match="judge at http://127.0.0.1:9/v1 failed after 1 tries"):
        JudgeClient("http://127.0.0.1:9/v1", "j", timeout=2, retries=1).complete("s", "u")


def test_questions_file_is_checked(tmp_path):
    path = tmp_path / "question.jsonl"
    write_jsonl(path, QUESTIONS)
    assert read_questions(path) == QUESTIONS
    write_jsonl(path, [{"question_id": 1, "category": "writing", "turns": ["only one"]}])
    with pytest.raises(ValueError, match="question.jsonl: row 0 is not an MT-Bench question"):
        read_questions(path)


class ChatByteTokenizer:
    bos_id, eos_id, pad_id, vocab_size, stop_ids, chat_template = None, 0, None, 256, frozenset({0}), "chatml"

    def encode_special(self, text, bos=False, eos=False):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


def test_generate_answers_in_fastchat_format():
    torch.manual_seed(0)
    model = Transformer(get_config("tiny")).eval()
    answers = generate_answers(model, ChatByteTokenizer(), QUESTIONS, "tiny", max_new_tokens=5)
    assert [a["question_id"] for a in answers] == [81, 111]
    for a in answers:
        assert a["model_id"] == "tiny" and len(a["choices"]) == 1 and len(a["choices"][0]["turns"]) == 2
    again = generate_answers(model, ChatByteTokenizer(), QUESTIONS[1:], "tiny", max_new_tokens=5)
    assert again[0]["choices"] == answers[1]["choices"]  # math is greedy (temperature 0)
