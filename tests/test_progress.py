"""Progress where the output is not a terminal: a line every 10%, not a carriage-return stream."""

import io
from types import SimpleNamespace

from chain_of_diffusion.progress import LineProgress, progress_bar


def test_a_pipe_gets_a_line_every_ten_percent():
    out = io.StringIO()
    bar = LineProgress(250, "gen 0 train", stream=out)
    for i in range(250):
        bar.update(1)
        if i == 100:
            bar.set_postfix(loss="0.1234")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == "gen 0 train: 10% (25/250)" and lines[-1] == "gen 0 train: 100% (250/250) loss=0.1234"


def test_a_resumed_bar_does_not_repeat_the_lines_of_work_done_before():
    out = io.StringIO()
    bar = LineProgress(100, "gen 1 train", initial=55, stream=out)
    bar.update(5)  # 60%
    bar.update(40)
    assert [line.split(": ")[1].split("%")[0] for line in out.getvalue().splitlines()] == ["60", "100"]


def test_progress_bar_picks_lines_for_a_pipe_and_nothing_on_other_processes(capsys):
    main, other = SimpleNamespace(is_local_main_process=True), SimpleNamespace(is_local_main_process=False)
    bar = progress_bar(main, 10, "gen 0 generate")  # pytest's captured stderr is not a terminal
    assert isinstance(bar, LineProgress)
    bar.update(10)
    quiet = progress_bar(other, 10, "gen 0 generate")
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == "gen 0 generate: 100% (10/10)\n"
