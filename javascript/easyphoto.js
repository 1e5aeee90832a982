// EasyPhoto front-end helpers. The WebUI loads every javascript/*.js into one global
// namespace shared by all extensions, so everything lives under `easyphoto_`-prefixed names.
var easyphoto_version = "0.1.0";
