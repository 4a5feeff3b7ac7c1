// Starts Swagger UI on this server's own definition. Kept in a file of its
// own, not inline, so that the page's Content-Security-Policy can refuse
// every inline script.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    // The default sends the definition to a validator on another host.
    validatorUrl: null,
    // The base layout has no top bar, so no box to load a definition from
    // elsewhere.
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
    deepLinking: true,
    displayRequestDuration: true,
    supportedSubmitMethods: ["get"],
  });
});
