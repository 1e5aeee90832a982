// EasyPhoto front-end helpers. The WebUI loads every javascript/*.js into one global
// namespace shared by all extensions, so every global here is prefixed `easyphoto_`.
// Nothing here is needed for the UI to work. gradio 3.41 (the WebUI's) does not scroll a text
// box to its end when its value changes: the training log is kept at its newest line unless
// the user has scrolled up to read (gradio 4+ does this itself).
var easyphoto_version = "0.1.0";

function easyphoto_follow_log() {
    var root = typeof gradioApp === "function" ? gradioApp() : document;
    var area = root.querySelector("#easyphoto_train_log textarea");
    if (!area) {
        return;
    }
    if (area.value !== area.dataset.easyphotoSeen) {
        if (area.dataset.easyphotoFollow !== "no") {
            area.scrollTop = area.scrollHeight;
        }
        area.dataset.easyphotoSeen = area.value;
    } else {
        var atEnd = area.scrollHeight - area.scrollTop - area.clientHeight < 48;
        area.dataset.easyphotoFollow = atEnd ? "yes" : "no";
    }
}

if (typeof onUiLoaded === "function") {
    onUiLoaded(function () {
        setInterval(easyphoto_follow_log, 500);
    });
}
