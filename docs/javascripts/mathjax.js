// MathJax configuration for pymdownx.arithmatex's generic output: only the spans and divs that
// arithmatex marks are typeset. MathJax itself (assets/mathjax/tex-chtml.js) is served by this site.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
    // The context menu would load more of MathJax on demand; the pages do not need it.
    enableMenu: false
  }
};
