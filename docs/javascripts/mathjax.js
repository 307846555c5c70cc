// MathJax settings for the whole site. MathJax itself (assets/mathjax/tex-svg-full.js) is served with the
// site, so maths renders without network access.
//
// Two sources of maths:
// - Markdown pages: pymdownx.arithmatex (generic mode) wraps each formula in an element of class
//   "arithmatex", as \( ... \) or \[ ... \].
// - Notebooks (mkdocs-jupyter): markdown cells keep Jupyter's $ ... $ and $$ ... $$ (and \( \), \[ \])
//   inside elements of class "jp-RenderedMarkdown".
// Only those elements are typeset, so a stray "$" in prose, code or API text elsewhere is left alone.
const MATHS_SELECTOR = ".arithmatex, .jp-RenderedMarkdown";

function typesetMaths() {
  const targets = Array.from(document.querySelectorAll(MATHS_SELECTOR));
  if (targets.length === 0) {
    return Promise.resolve();
  }
  MathJax.typesetClear();
  MathJax.texReset();
  return MathJax.typesetPromise(targets);
}

window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  svg: {
    fontCache: "global"
  },
  startup: {
    // the whole page is not scanned: typesetMaths picks the elements that hold maths
    typeset: false,
    pageReady: () => MathJax.startup.defaultPageReady().then(typesetMaths)
  }
};

// Material's instant navigation swaps the page body without reloading scripts: typeset each new one, after
// any typesetting still running. Its first page is the one pageReady above typesets.
if (typeof document$ !== "undefined") {
  let first = true;
  document$.subscribe(() => {
    if (first) {
      first = false;
      return;
    }
    MathJax.startup.promise = MathJax.startup.promise.then(typesetMaths);
  });
}
