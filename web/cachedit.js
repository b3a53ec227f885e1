// CacheDit's frontend extension (loaded by ComfyUI from the pack's WEB_DIRECTORY).
//
// * CacheDit Detailed Stats: a read-only text box on the node shows the run summary the node
//   sends in its `ui` output, in the UI's language (`text_zh` for Chinese, `text` otherwise).
//   The stock frontend shows `ui.text` only for its own nodes.
// * Every CacheDit node is made wide enough for its whole title: the frontend cuts a title that
//   is wider than the node less two title heights, and sizes new nodes narrower than that.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const STATS_NODE = "CacheDitDetailedStats";
const SUMMARY_WIDGET = "cachedit_summary";
const STATS_MIN_SIZE = [440, 620]; // room for the summary and for the chart at a readable scale
const PLACEHOLDER = {
  en: "Run the workflow: what CacheDit did on the last run shows here.",
  zh: "运行工作流后，这里显示 CacheDit 在最近一次运行中的情况。",
};

function uiLanguage() {
  const locale =
    app.extensionManager?.setting?.get?.("Comfy.Locale") ??
    app.ui?.settings?.getSettingValue?.("Comfy.Locale") ??
    navigator.language ??
    "en";
  return String(locale).toLowerCase().startsWith("zh") ? "zh" : "en";
}

let measureContext = null;
function titleWidth(node) {
  measureContext ??= document.createElement("canvas").getContext("2d");
  measureContext.font = node.titleFontStyle ?? "14px Arial";
  return measureContext.measureText(node.getTitle?.() ?? node.title ?? "").width;
}

// The width a node needs to show its whole title (drawTitleText keeps size[0] - 2 title heights).
export function widthForTitle(node) {
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  return Math.ceil(titleWidth(node) + 2 * titleHeight + 8);
}

function summaryFor(message) {
  const zh = uiLanguage() === "zh" ? message?.text_zh?.[0] : undefined;
  return zh ?? message?.text?.[0];
}

app.registerExtension({
  name: "CacheDit.Nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name ?? "").startsWith("CacheDit")) return;

    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function (out) {
      const size = computeSize.call(this, out);
      size[0] = Math.max(size[0], widthForTitle(this));
      return size;
    };

    if (nodeData.name !== STATS_NODE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, SUMMARY_WIDGET, ["STRING", { multiline: true }], app).widget;
      widget.serialize = false; // a run's summary is not part of the workflow
      const element = widget.element ?? widget.inputEl;
      if (element) {
        element.readOnly = true;
        element.placeholder = PLACEHOLDER[uiLanguage()];
      }
      this.setSize([Math.max(this.size[0], STATS_MIN_SIZE[0]), Math.max(this.size[1], STATS_MIN_SIZE[1])]);
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = summaryFor(message);
      const widget = this.widgets?.find((w) => w.name === SUMMARY_WIDGET);
      if (widget && text != null) widget.value = text;
    };
  },
});
