// The sample's view: draws the HeliosWorldClient's texture over the whole screen with IMGUI (works
// in every render pipeline, needs no material or canvas), a status line, and a prompt box.
using UnityEngine;

namespace Helios.World.Samples
{
    [RequireComponent(typeof(HeliosWorldClient))]
    public sealed class HeliosWorldView : MonoBehaviour
    {
        HeliosWorldClient client;
        string nextPrompt = "an island at night in snow with houses";

        void Awake()
        {
            client = GetComponent<HeliosWorldClient>();
        }

        void OnGUI()
        {
            if (client.Texture != null)
            {
                GUI.DrawTexture(new Rect(0, 0, Screen.width, Screen.height), client.Texture, ScaleMode.ScaleToFit);
            }
            GUILayout.BeginArea(new Rect(10, 10, Screen.width - 20, 90));
            GUILayout.Label("Helios: " + client.Status);
            GUILayout.BeginHorizontal();
            nextPrompt = GUILayout.TextField(nextPrompt, GUILayout.Width(Mathf.Min(600, Screen.width - 140)));
            if (GUILayout.Button("Switch prompt", GUILayout.Width(110))) client.SendPrompt(nextPrompt);
            GUILayout.EndHorizontal();
            GUILayout.Label("W A S D, the arrows, Space, Shift and the mouse steer the world (the keys its model knows)");
            GUILayout.EndArea();
        }
    }
}
