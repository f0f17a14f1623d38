// Render pymdownx.arithmatex's output (generic mode: <span class="arithmatex">\(…\)</span> and
// <div class="arithmatex">\[…\]</div>) with the KaTeX that the site ships in assets/katex/.
// A formula KaTeX cannot parse is logged with console.error and left as text, so the browser
// check (docs/tools/check_site.py) fails on it.
document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    if (el.querySelector(".katex")) continue;
    const text = el.textContent.trim();
    const display = el.tagName === "DIV";
    const tex = text.replace(/^(\\\(|\\\[|\$\$?)/, "").replace(/(\\\)|\\\]|\$\$?)$/, "");
    try {
      katex.render(tex, el, { displayMode: display, throwOnError: true });
    } catch (err) {
      el.textContent = text;
      console.error("KaTeX could not render " + JSON.stringify(text) + ": " + err.message);
    }
  }
});
