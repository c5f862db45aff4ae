"""MT-Bench: rating parser, judge prompts (ours and a FastChat-format file), judge client against a fake
OpenAI-compatible server, answer generation."""
import json
import string
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from common.io import write_jsonl
from eval.mtbench import (JUDGE_PROMPTS, PLACEHOLDERS, JudgeClient, generate_answers, judge_answers, parse_rating,
                          read_judge_prompts, read_questions, summarize_scores)
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
    assert system == JUDGE_PROMPTS["single-v1"][0]
    assert user == "## Question\nWrite a poem.\n\n## Assistant's reply\nA1"
    math_user = reqs[2]["messages"][1]["content"]
    assert "## Reference solution\n4\n\n## Assistant's reply\nA1" in math_user
    multi = reqs[3]["messages"][1]["content"]
    assert "[User, turn 2]\nAnd 3+3?\n\n[Reference, turn 2]\n6" in multi and "[Assistant, turn 2]\nA2" in multi
    assert "Grade only the assistant's reply to the user's second message" in reqs[1]["messages"][0]["content"]
    assert [j["score"] for j in judgments] == [8.0, 8.5, 7.0, None]
    summary = summarize_scores(judgments)
    assert summary == {"turn_1": 7.5, "turn_2": 8.5, "overall": pytest.approx(23.5 / 3), "n_rated": 3, "n_excluded": 1}


def test_default_prompts_show_their_fields_and_ask_for_a_bracketed_rating():
    assert set(JUDGE_PROMPTS) == set(PLACEHOLDERS)
    for name, (system, template) in JUDGE_PROMPTS.items():
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        assert fields == PLACEHOLDERS[name], name
        assert "[[rating]]" in system + template and "1" in system and "10" in system, name
        assert parse_rating(system + template) is not None, name  # its example rating is in the parsed format


FILE_PROMPTS = {  # distinctive texts, so the requests show which prompts were used
    "single-v1": ("sys one", "Q={question} A={answer}"),
    "single-math-v1": ("sys math", "Q={question} R={ref_answer_1} A={answer}"),
    "single-v1-multi-turn": ("sys two", "{question_1}|{answer_1}|{question_2}|{answer_2}"),
    "single-math-v1-multi-turn": ("sys math two", "{question_1}|{ref_answer_1}|{answer_1}|{question_2}|{ref_answer_2}|{answer_2}"),
}


def write_prompts_file(path, prompts, extra_rows=()):
    rows = [{"name": "pair-v2", "type": "pairwise", "system_prompt": "x {question}", "prompt_template": "{nope}"},
            *[{"name": n, "type": "single", "system_prompt": s, "prompt_template": t, "output_format": "[[rating]]"}
              for n, (s, t) in prompts.items()], *extra_rows]
    write_jsonl(path, rows)


def test_judge_prompts_file_is_read_and_sent_to_the_judge(tmp_path, judge_server):
    path = tmp_path / "judge_prompts.jsonl"
    write_prompts_file(path, FILE_PROMPTS)
    prompts = read_judge_prompts(path)
    assert prompts == FILE_PROMPTS  # other names (pairwise) are skipped
    FakeJudge.replies = ["[[1]]", "[[2]]", "[[3]]", "[[4]]"]
    judgments = judge_answers(QUESTIONS, ANSWERS, JudgeClient(judge_server, "j"), prompts=prompts)
    sent = [tuple(m["content"] for m in r["messages"]) for r in FakeJudge.requests]
    assert sent == [("sys one", "Q=Write a poem. A=A1"), ("sys two", "Write a poem.|A1|Make it shorter.|A2"),
                    ("sys math", "Q=What is 2+2? R=4 A=A1"), ("sys math two", "What is 2+2?|4|A1|And 3+3?|6|A2")]
    assert [j["user_prompt"] for j in judgments] == [u for _, u in sent]
    assert [j["score"] for j in judgments] == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("prompts, extra, error", [
    ({k: v for k, v in FILE_PROMPTS.items() if k != "single-v1-multi-turn"}, [],
     "judge_prompts.jsonl: no judge prompt named single-v1-multi-turn"),
    (FILE_PROMPTS, [{"system_prompt": "s", "prompt_template": "t"}], "line 6: not a judge prompt"),
    (FILE_PROMPTS, [{"name": "single-v1", "system_prompt": "s", "prompt_template": "{question}{answer}"}],
     "line 6: repeats judge prompt single-v1"),
    ({**FILE_PROMPTS, "single-math-v1": ("s", None)}, [], r"line 3: single-math-v1 needs string system_prompt"),
    ({**FILE_PROMPTS, "single-v1": ("s", "{question} {ref_answer_1}")}, [],
     r"line 2: single-v1 template has placeholders \['question', 'ref_answer_1'\], expected \['answer', 'question'\]"),
    ({**FILE_PROMPTS, "single-v1": ("s", "{question} {answer")}, [], r"line 2: single-v1 template is not a valid format"),
])
def test_bad_judge_prompts_file_is_a_clear_error(tmp_path, prompts, extra, error):
    path = tmp_path / "judge_prompts.jsonl"
    write_prompts_file(path, prompts, extra)
    with pytest.raises(ValueError, match=error):
        read_judge_prompts(path)


def test_judge_prompts_file_that_is_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text('{"name": "pair-v2"}\n\n{"name": oops}\n')
    with pytest.raises(ValueError, match="judge_prompts.jsonl: line 3: not valid JSON"):
        read_judge_prompts(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl: no such file"):
        read_judge_prompts(tmp_path / "missing.jsonl")


def test_cli_judges_with_the_given_prompts_file(tmp_path, judge_server, capsys):
    from eval.__main__ import main

    write_jsonl(tmp_path / "question.jsonl", QUESTIONS)
    write_jsonl(tmp_path / "answers.jsonl", ANSWERS)
    write_prompts_file(tmp_path / "judge_prompts.jsonl", FILE_PROMPTS)
    FakeJudge.replies = ["[[2]]", "[[4]]", "[[6]]", "[[8]]"]
    main(["mtbench", "--model", "unused", "--judge-only", "--questions", str(tmp_path / "question.jsonl"),
          "--answers", str(tmp_path / "answers.jsonl"), "--judge-url", judge_server,
          "--judge-prompts", str(tmp_path / "judge_prompts.jsonl"), "--judgments", str(tmp_path / "j.jsonl")])
    assert [r["messages"][0]["content"] for r in FakeJudge.requests] == ["sys one", "sys two", "sys math", "sys math two"]
    assert json.loads(capsys.readouterr().out)["overall"] == 5.0
    assert [json.loads(line)["score"] for line in (tmp_path / "j.jsonl").read_text().splitlines()] == [2.0, 4.0, 6.0, 8.0]


def test_unreachable_judge_is_a_clear_error():
    with pytest.raises(ConnectionError, match="judge at http://127.0.0.1:9/v1 failed after 1 tries"):
        JudgeClient("http://127.0.0.1:9/v1", "j", timeout=2, retries=1).complete("s", "u")


def test_questions_file_is_checked(tmp_path):
    path = tmp_path / "question.jsonl"
    write_jsonl(path, QUESTIONS)
    assert read_questions(path) == QUESTIONS
    write_jsonl(path, [{"question_id": 1, "category": "writing", "turns": ["only one"]}])
    with pytest.raises(ValueError, match="question.jsonl: record 0: not an MT-Bench question"):
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


def test_cli_bad_file_is_one_error_line(tmp_path):
    from eval.__main__ import main

    questions = tmp_path / "question.jsonl"
    questions.write_text(json.dumps(QUESTIONS[0]) + "\n{broken\n")
    argv = ["mtbench", "--model", "unused", "--judge-only", "--questions", str(questions),
            "--answers", str(tmp_path / "answers.jsonl")]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == f"error: {questions}: line 2: not valid JSON (Expecting property name enclosed in " \
                                "double quotes, column 2)"
    with pytest.raises(ValueError, match="line 2: not valid JSON"):  # --debug: the exception itself
        main([*argv, "--debug"])
