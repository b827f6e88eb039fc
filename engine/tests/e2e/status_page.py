#!/usr/bin/env python3
"""The status page in a real browser: headless Chromium (Debian's package), driven by
Playwright, watching `weir run` take a burst.

    python3 engine/tests/e2e/status_page.py --weir target/debug/weir [--screenshot PATH]

In a temporary directory: `weir run <repo>/pipelines/thumbnails.toml --listen ADDR`,
the page opened at http://ADDR/ before anything arrives (it must show 0 done), then 20
JPEGs and 3 bad files dropped into data/inbox/. Without reloading, the page must count
20 done and 3 dead-lettered, name the three bad files with their errors in the dead
letters table, and show the pipeline's trigger; on a 390 px wide screen nothing may be
wider than the screen. Screenshots of the final page are written (default
target/status-page.png, and -phone.png beside it). Exits non-zero on any difference.

Needs Pillow and playwright (`pip install Pillow playwright`; the browser is
/usr/bin/chromium, never one Playwright downloads).
"""
import argparse, io, os, socket, subprocess, sys, tempfile, time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[3]
# The flags the machine's Chromium needs here: no sandbox as root, no network beyond
# loopback (background services would try and fail).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(width, height, seed):
    img = Image.new("RGB", (width, height))
    img.putdata([((x * 255) // width, (y * 255) // height, (x // 7 + y // 5 + seed * 13) % 64 * 4)
                 for y in range(height) for x in range(width)])
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def drop(inbox, name, data):
    part = inbox / f".{name}.part"
    part.write_bytes(data)
    part.rename(inbox / name)


def wait(what, condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", default=str(ROOT / "target" / "debug" / "weir"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--screenshot", default=str(ROOT / "target" / "status-page.png"))
    args = ap.parse_args()
    weir = str(Path(args.weir).resolve())
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="weir-status-e2e-") as tmp:
        tmp = Path(tmp)
        inbox = tmp / "data" / "inbox"
        inbox.mkdir(parents=True)
        log = open(tmp / "weir.log", "wb")
        proc = subprocess.Popen([weir, "run", str(ROOT / "pipelines" / "thumbnails.toml"), "--listen", f"127.0.0.1:{port}"],
                                cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                card = page.locator('[data-pipeline="thumbnails"]')
                deadline = time.monotonic() + 30
                while True:
                    try:
                        page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
                        break
                    except Exception:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            sys.exit("weir run did not serve the page:\n" + (tmp / "weir.log").read_text()[-3000:])
                        time.sleep(0.2)
                card.wait_for(timeout=10000)
                before = card.get_by_test_id("done").inner_text()
                if before != "0":
                    sys.exit(f"before the burst the page shows {before} done")

                shapes = [(900, 600), (600, 900), (500, 500), (320, 240)]
                for i in range(20):
                    drop(inbox, f"photo {i:02}.jpg", jpeg(*shapes[i % len(shapes)], i))
                good = jpeg(400, 300, 99)
                drop(inbox, "empty.jpg", b"")
                drop(inbox, "x.jpg", b"<html><body>not a photo</body></html>")
                drop(inbox, "truncated.jpg", good[: len(good) // 3])

                # No reload from here on: the page updates itself.
                seen = set()
                def counts():
                    done = card.get_by_test_id("done").inner_text()
                    dead = card.get_by_test_id("dead-lettered").inner_text()
                    seen.add(done)
                    return done == "20" and dead == "3"
                wait("the page to count 20 done and 3 dead-lettered", counts)
                rows = page.get_by_test_id("dead-letter")
                wait("three dead letters listed", lambda: rows.count() == 3, 10)
                letters = sorted(rows.nth(i).inner_text() for i in range(3))
                for name in ("inbox/empty.jpg", "inbox/truncated.jpg", "inbox/x.jpg"):
                    match = [l for l in letters if name in l]
                    if not match:
                        sys.exit(f"{name} is not among the dead letters: {letters}")
                    error = match[0].split("\t")[-2].strip()
                    if len(error) < 10:
                        sys.exit(f"{name}'s dead letter shows no error: {match[0]!r}")
                trigger = card.inner_text()
                if "object_store trigger" not in trigger:
                    sys.exit(f"the card does not name its trigger: {trigger!r}")
                if card.get_by_test_id("received").inner_text() != "23":
                    sys.exit("received is not 23")
                Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.screenshot, full_page=True)
                # Readable on a phone: nothing wider than the screen but the tables,
                # which scroll inside their own boxes.
                page.set_viewport_size({"width": 390, "height": 844})
                page.wait_for_timeout(300)
                width = page.evaluate("document.documentElement.scrollWidth")
                if width > 390:
                    sys.exit(f"on a 390 px wide screen the page is {width} px wide")
                phone = Path(args.screenshot).with_name(Path(args.screenshot).stem + "-phone.png")
                page.screenshot(path=str(phone))
                # The redrive button runs a dead letter again, from the page: x.jpg is
                # still not an image, so it fails again, and the page says so.
                page.set_viewport_size({"width": 1280, "height": 900})
                row = rows.filter(has_text="inbox/x.jpg").first
                button = row.get_by_test_id("redrive")
                button.click()
                wait("the redrive to answer", lambda: button.get_attribute("data-result") is not None, 30)
                if button.get_attribute("data-result") != "failed_again" or "not a supported image" not in (button.get_attribute("title") or ""):
                    sys.exit(f"redrive of x.jpg: {button.get_attribute('data-result')} {button.get_attribute('title')!r}")
                intermediate = sorted(int(v) for v in seen if v.isdigit())
                browser.close()
            print(f"status page: 0 done before the burst, then {intermediate} done as it went, 20 done and 3 "
                  f"dead-lettered without a reload; dead letters listed with errors; a redrive from the page failed "
                  f"again as it should; screenshot {args.screenshot}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
