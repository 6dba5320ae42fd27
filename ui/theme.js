// A classic script in <head>, run before the first paint: the theme chosen last time (the server
// has the truth, app.js applies it once the settings load), so a dark page never flashes light.
try {
  const theme = localStorage.getItem("tandem.theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
} catch {}
